"""pytest-benchmark: the wall time of one training step per method, with memory figures.

Skipped in the default run (``addopts`` has ``--benchmark-skip``). Run them with::

    python -m pytest tests/test_benchmarks.py --benchmark-only
    python -m pytest tests/test_benchmarks.py --benchmark-only --benchmark-autosave   # saves .benchmarks/<machine>/0001_*.json

Compare two saved runs (ids or file-name prefixes of the autosaved files)::

    pytest-benchmark compare 0001 0002 --group-by=group --columns=median,iqr,ops
    python -m pytest tests/test_benchmarks.py --benchmark-only --benchmark-compare=0001   # this run against 0001
    python -m pytest tests/test_benchmarks.py --benchmark-only --benchmark-compare=0001 \
        --benchmark-compare-fail=median:10%   # fail if a median step got 10% slower

What is timed: forward + loss + backward + optimizer step + zero_grad of a small model on CPU
(``tiny-llama``; LaMDA++ on the real ``minilm-l6`` weights, since on random weights its rank
allocation means nothing; that group is skipped when the weights are not installed).
LaMDA is timed with its up-projection B still trainable (the freezing horizon is set far
beyond the benchmark's rounds): the step's most expensive state, not an average.

Each benchmark's ``extra_info`` carries the figures ``lamda_bench.runner.run_cell`` records
for the same cell (a separate, tracked run: trackers are off while timing) over the same horizon
(option ``total_steps``), so LaMDA's figures are those of a step with B trainable, the state it
is timed in: trainable parameters, saved activations (all and adapter path), peak live bytes
and forward/backward FLOPs, all raw (bytes, FLOPs). They are saved with ``--benchmark-autosave``
/ ``--benchmark-json``.
"""

from __future__ import annotations

import pytest
import torch

from lamda_bench.suite.cell import Cell
from lamda_bench.methods import AdapterSpec, get_method
from lamda_bench.model.workloads import build_model, compute_loss, make_inputs, resolve_targets, torch_dtype

TINY_METHODS = ("full", "lora", "pissa", "lora-fa", "dora", "vera", "lamda")
MINILM_METHODS = ("lora", "lamda", "lamda++")
# A horizon far beyond any benchmark's rounds: LaMDA's B stays trainable while timed.
TIMED_HORIZON_STEPS = 1_000_000

# record field -> extra_info key
EXTRA_FIELDS = {
    "params.trainable": "trainable_params",
    "memory.saved_activations": "saved_activations_bytes",
    "memory.saved_activations_adapter": "saved_activations_adapter_bytes",
    "memory.peak": "peak_live_bytes",
    "memory.host_rss_peak": "host_rss_peak_bytes",
    "flops.forward": "forward_flops",
    "flops.backward": "backward_flops",
}


def _cell(workload: str, method: str) -> Cell:
    """The benchmarked cell; ``total_steps`` is its horizon for the timed loop and for run_cell."""
    return Cell(workload=workload, method=method, r=4, alpha=8.0, dtype="fp32", device="cpu",
                mode="measure", batch=2, seq=32, steps=3, warmup=1,
                options=(("total_steps", TIMED_HORIZON_STEPS),))


def _training_step(cell: Cell):
    """A closure running one full training step of ``cell``'s model with its method applied."""
    model = build_model(cell)
    method = get_method(cell.method)
    options = dict(cell.options)
    horizon = options.pop("total_steps")  # a run setting, not a method option
    spec = AdapterSpec(r=cell.r, alpha=cell.alpha, targets=resolve_targets(cell, model),
                       dtype=torch_dtype(cell.dtype), options=method.resolve_options(options),
                       total_steps=horizon, seed=cell.seed)
    applied = method.apply(model, spec)
    optimizer = applied.make_optimizer(cell.lr)
    inputs = make_inputs(cell)
    done = [0]

    def step() -> None:
        loss = compute_loss(cell, applied.model, inputs)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        done[0] += 1
        applied.on_step(done[0], optimizer)

    return step


def _memory_figures(cell: Cell) -> dict:
    from lamda_bench.runner import run_cell

    record = run_cell(cell.to_dict())
    assert record["status"] == "ok", f"run_cell failed: {record.get('error')}"
    assert record["info"]["steps"]["total_steps"] == TIMED_HORIZON_STEPS  # the horizon the step is timed at
    if cell.method.startswith("lamda"):  # B trainable in every recorded step, as while timed
        assert len(set(record["series"]["trainable"])) == 1
    from lamda_bench.results.record import run_device, run_mode

    out = {"mode": run_mode(record), "device": run_device(record)}
    for dotted, key in EXTRA_FIELDS.items():
        node = record
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        out[key] = node
    return out


def _bench(benchmark, cell: Cell) -> None:
    step = _training_step(cell)
    benchmark.group = f"{cell.workload} train step (batch {cell.batch}, seq {cell.seq}, r {cell.r}, fp32, cpu)"
    benchmark.extra_info.update({"workload": cell.workload, "method": cell.method, "r": cell.r,
                                 "batch": cell.batch, "seq": cell.seq, "tokens_per_step": cell.batch * cell.seq})
    benchmark.pedantic(step, rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(_memory_figures(cell))


@pytest.mark.slow
@pytest.mark.parametrize("method", TINY_METHODS)
def test_train_step_tiny_llama(benchmark, method):
    _bench(benchmark, _cell("tiny-llama", method))


@pytest.mark.slow
@pytest.mark.minilm
@pytest.mark.parametrize("method", MINILM_METHODS)
def test_train_step_minilm(benchmark, method, minilm_required):
    _bench(benchmark, _cell("minilm-l6", method))
