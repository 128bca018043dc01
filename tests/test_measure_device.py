"""Device figures and timing: None where the device has no such figure; timing refuses
to run with trackers on."""

import subprocess
import sys

import pytest
import torch
from torch import nn

from lamda_bench.measure import LiveMemoryTracker, time_steps
from lamda_bench.measure import device as dev


def test_cpu_has_no_cuda_figures():
    assert dev.cuda_peaks("cpu") == {"cuda_max_allocated": None, "cuda_max_reserved": None, "cuda_max_active": None}
    assert dev.nvml_used("cpu") is None
    assert dev.device_name("cpu") is None
    dev.warm_up_blas("cpu")
    dev.reset_peaks("cpu")
    assert dev.start_memory_history("cpu") is False


def test_host_rss_peak_sees_a_large_allocation():
    before = dev.host_rss_peak()
    block = torch.ones(64 * 2**20, dtype=torch.uint8)  # 64 MiB, touched
    after = dev.host_rss_peak()
    assert isinstance(before, int) and after >= before
    assert after >= block.numel()  # bytes, not KiB
    assert dev.host_rss_now() > 0


def test_importing_measure_does_not_initialise_cuda():
    code = (
        "import torch, lamda_bench.measure, lamda_bench.measure.device as d; d.host_rss_peak(); "
        "print(torch.cuda.is_initialized())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_time_steps_counts_and_orders():
    calls = []
    t = time_steps(lambda: calls.append(1), warmup=2, repeats=3)
    assert len(calls) == 5 and len(t.times_s) == 3
    assert t.min_s <= t.median_s <= t.max_s and t.spread >= 0


def test_time_steps_refuses_with_trackers_on():
    with LiveMemoryTracker(nn.Linear(2, 2)):
        with pytest.raises(RuntimeError, match="trackers are on: LiveMemoryTracker"):
            time_steps(lambda: None, warmup=0, repeats=1)


@pytest.mark.parametrize("warmup,repeats", [(-1, 1), (0, 0)])
def test_time_steps_bad_input(warmup, repeats):
    with pytest.raises(ValueError, match="time_steps needs"):
        time_steps(lambda: None, warmup=warmup, repeats=repeats)
