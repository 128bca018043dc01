"""Trace one cell as an estimate on fake tensors with the op recorder on its instrumented step;
print or save its op list. Used by scripts/calibrate_step_time.py and validate_step_time.py.

The runner has no op-recorder hook yet (issue 40's integration is the runner's); this script
wraps the instrumented step's trackers from outside, which changes nothing else in the run.
"""

from __future__ import annotations

import json
import sys

from lamda_bench.measure.ops import OpRecorder
from lamda_bench.runner import step as runner_step
from lamda_bench.runner.resolve import estimate_device, resolve
from lamda_bench.suite.cell import Cell

_Trackers = runner_step.StepTrackers
_recorders: list[OpRecorder] = []


class _WithOps(_Trackers):
    """The instrumented step's trackers (the only ones with the saved-tensor tracker on) plus an
    op recorder on their shared scope."""

    def __enter__(self):
        out = super().__enter__()
        if self.saved is not None:
            rec = OpRecorder(self.scope)
            self._stack.enter_context(rec)
            _recorders.append(rec)
        return out


def trace_ops(cell: dict) -> list[dict]:
    """The instrumented step's ops of ``cell`` run as an estimate (its ``layers`` as given)."""
    cell = {**cell, "mode": "estimate", "steps": 0, "warmup": 0}
    c = Cell.from_dict(cell)
    plan = resolve(c, timeline=False)
    device, _ = estimate_device(plan.cell, plan.device)
    _recorders.clear()
    runner_step.StepTrackers = _WithOps
    try:
        runner_step.estimate(plan, device)
    finally:
        runner_step.StepTrackers = _Trackers
    if len(_recorders) != 1:
        raise RuntimeError(f"expected one instrumented step, saw {len(_recorders)}")
    return _recorders[0].ops()


if __name__ == "__main__":
    ops = trace_ops(json.loads(sys.argv[1]))
    json.dump(ops, sys.stdout, indent=0)
