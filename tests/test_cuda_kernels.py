"""Issue 43 item 4: where the CPU kernels an estimate traces save other tensors than CUDA's."""

from __future__ import annotations

import torch

from lamda_bench.measure import cuda_kernels
from lamda_bench.one_cell.output import describe
from lamda_bench.runner import run_cell


def saved_by(fn, x: torch.Tensor) -> list[torch.Tensor]:
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        fn(x).sum().backward()
    return saved


def test_cpu_dropout_saves_a_mask_in_the_input_dtype_and_the_correction_is_its_excess_over_bool():
    x = torch.randn(6, 10, requires_grad=True)
    masks = [t for t in saved_by(lambda v: torch.nn.functional.dropout(v, 0.05, training=True), x)
             if t.shape == x.shape]
    assert [m.dtype for m in masks] == [torch.float32]  # CPU: not native_dropout's bool mask
    cpu_bytes = sum(m.numel() * m.element_size() for m in masks)
    assert cpu_bytes - cuda_kernels.dropout_mask_correction(x.numel(), 4) == x.numel()  # a bool per element
    assert cuda_kernels.adapter_dropout_correction([(6, 10, 4), (6, 10, 2)]) == 60 * 3 + 60 * 1


def test_a_cpu_estimate_says_where_cuda_differs():
    cell = dict(workload="tiny-llama", method="lora", r=2, dtype="fp32", device="cpu", batch=1, seq=8, warmup=0,
                steps=0, mode="estimate", layers=2, targets="attn")
    with_dropout = run_cell(dict(cell, options={"dropout": 0.05}))
    assert with_dropout["status"] == "ok", with_dropout["error"]
    lines = with_dropout["info"]["cpu_kernels"]
    assert any(line.startswith("adapter dropout p=0.05") for line in lines)
    assert any(line.startswith("SDPA") for line in lines) == (with_dropout["info"]["attn_implementation"] == "sdpa")
    assert "NOTE: traced with CPU kernels, a CUDA step differs: adapter dropout" in describe(with_dropout, False, "x")
    eager = run_cell(dict(cell, attn_implementation="eager"))
    assert "cpu_kernels" not in eager["info"]  # no dropout, no SDPA: nothing differs
    assert cuda_kernels.statement(with_dropout["info"], "cuda") is None
