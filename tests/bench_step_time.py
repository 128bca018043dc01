"""pytest-benchmark: what the step-time model adds to a full-size estimate cell (issue 40's "adds
at most 10% to an estimate's cell time").

Skipped in the default run (``addopts`` has ``--benchmark-skip``; the file is not a ``test_*.py``
either). Run it with::

    python -m pytest tests/bench_step_time.py --benchmark-only -p no:randomly

Three benchmarks of one group, on the LLaMA2-7B LoRA r16 estimate cell (all projections, batch 4
x 1024, bf16: the cell of ``tests/bench_estimate.py``):

- ``test_estimate_cell``: ``runner.run_cell`` as it runs today (probes at depths 3, 4, 5).
- ``test_estimate_cell_recording_ops``: the same with an ``OpRecorder`` on every probe's
  instrumented step (the runner has no hook yet: its trackers are wrapped from outside, as
  ``scripts/trace_ops.py`` does).
- ``test_predict_step_time``: ``predict_step_time`` on the three probes' op lists plus
  ``extrapolate_time`` to 32 blocks, on one card.

The model's cost is (recording - plain) + predict; read it against ``test_estimate_cell``'s
median. Each benchmark's ``extra_info`` carries the op lists' sizes. A shared, loaded machine
slows the two cell benchmarks far more than the pure prediction: quote the load beside a figure.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import pytest

from lamda_bench.card.step_time import extrapolate_time, predict_step_time
from lamda_bench.measure.ops import OpRecorder
from lamda_bench.runner import run_cell
from lamda_bench.runner import step as runner_step

CELL = dict(workload="llama2-7b", method="lora", r=16, batch=4, seq=1024, dtype="bf16", targets="all",
            mode="estimate", device="auto")
CARD = "H100-80GB"
GROUP = "step-time model on the llama2-7b lora r16 b4 x 1024 estimate cell"


@contextmanager
def recording_ops(recorders: list[OpRecorder]):
    """Every instrumented step run inside gets an ``OpRecorder`` (appended to ``recorders``)."""
    base = runner_step.StepTrackers

    class WithOps(base):
        def __enter__(self):
            out = super().__enter__()
            if self.saved is not None:  # the instrumented step: the only one with the saved tracker
                rec = OpRecorder(self.scope)
                self._stack.enter_context(rec)
                recorders.append(rec)
            return out

    runner_step.StepTrackers = WithOps
    try:
        yield
    finally:
        runner_step.StepTrackers = base


def _run_ok(cell: dict) -> dict:
    record = run_cell(dict(cell))
    assert record["status"] == "ok", record.get("error")
    return record


@pytest.fixture(scope="module")
def probe_ops() -> dict[int, list[dict]]:
    """The three probes' op lists of one recorded run of the cell, by depth (the deeper probe has
    more ops: sorted by their total count)."""
    recorders: list[OpRecorder] = []
    with recording_ops(recorders):
        record = _run_ok(CELL)
    depths = record["info"]["trace"]["probe_depths"]
    assert record["info"]["trace"]["mode"] != "full", "the cell ran a full trace, not probes"
    lists = sorted((r.ops() for r in recorders), key=lambda ops: sum(op["count"] for op in ops))
    assert len(lists) == len(depths), f"expected one instrumented step per probe, saw {len(lists)}"
    return dict(zip(sorted(depths), lists))


def _label(benchmark, what: str) -> None:
    benchmark.group = GROUP
    benchmark.extra_info.update({"what": what, "cell": CELL, "load_1min": os.getloadavg()[0]})


@pytest.mark.slow
def test_estimate_cell(benchmark):
    _label(benchmark, "run_cell, no op recorder")
    benchmark.pedantic(_run_ok, args=(CELL,), rounds=3, iterations=1, warmup_rounds=1)


@pytest.mark.slow
def test_estimate_cell_recording_ops(benchmark):
    _label(benchmark, "run_cell with an OpRecorder on each probe's instrumented step")

    def run():
        recorders: list[OpRecorder] = []
        with recording_ops(recorders):
            _run_ok(CELL)
        return recorders

    recorders = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info["op_entries_per_probe"] = [len(r.ops()) for r in recorders]


@pytest.mark.slow
def test_predict_step_time(benchmark, probe_ops):
    _label(benchmark, f"predict_step_time on the probes' op lists + extrapolate_time to 32 blocks on {CARD}")
    benchmark.extra_info["op_entries_per_probe"] = {d: len(ops) for d, ops in probe_ops.items()}

    def predict():
        return extrapolate_time({d: predict_step_time(ops, CARD) for d, ops in probe_ops.items()}, 32)

    out = benchmark.pedantic(predict, rounds=20, iterations=1, warmup_rounds=2)
    assert out["step_s"] > 0 and out["extrapolated_from"] == sorted(probe_ops)
    benchmark.extra_info["predicted_step_s"] = out["step_s"]
