"""The cell runner. run_cell: one cell in, one record out (the record of docs/records.md).
Never raises.

The package reads in the order the data flows: ``resolve`` (the cell's rules, dtype, device,
options and horizon, once, into a ``Plan``) -> ``build`` (model, method, optimizer) -> ``step``
(the step loop with its trackers; ``observe`` watches the adapted calls) -> ``result``
(``StepResult``, what a run produced) -> ``assemble`` (the record). This conductor decides the
mode, since on a CPU in ``auto`` mode that decision runs an estimate first.
(The package is ``runner``, not ``run``: ``lamda_bench.run`` is the public API function of
``api.py``, which a subpackage of that name would shadow once imported.)

What a run is (``W`` = ``cell.warmup``, ``S`` = ``cell.steps``):

- ``measure``: W warmup steps (FLOPs counted, untimed), then one *instrumented* step with
  every tracker on (saved tensors, live bytes by category and phase with a module-boundary
  timeline, FLOPs), then S timed steps with every tracker off. That is W + 1 + S optimizer
  steps, and it is the horizon LaMDA's freezing schedule is laid over (``total_steps``,
  unless the cell's options set ``total_steps``): the instrumented step is a real training
  step too. Warmup steps that can hold the run's peak (``peaks.py``) run with the live-bytes
  tracker (no timeline); timed steps never do. On CUDA the BLAS workspaces are warmed and the
  allocator peaks reset before the first step: they cover the whole run. With
  ``LAMDA_BENCH_CUDA_SNAPSHOT=1`` and an artifacts dir, the instrumented step's allocator
  history is dumped to ``snapshots/<id>.pickle`` (for pytorch.org/memory_viz).
- ``estimate``: the model is built and the method applied on the meta device, then turned
  into fake tensors on the target device (``fake.to_fake``) and the instrumented step runs
  there: bytes and FLOPs without memory or time. Only the instrumented step and the steps
  that can hold the run's peak (``peaks.py``: LaMDA's steps 1 and 2) run forward and backward.
  Where step 1 does not run, it is replaced by one optimizer step on zero gradients (so later
  steps see the optimizer state a real run has after its first step), and the schedule is
  advanced through the method's own ``on_step`` for the steps that do not run, so
  ``params.updates`` and the ``series`` cover the same W + 1 + S steps as a measurement
  (``series.ran`` says which steps ran). Time fields are null.
- ``auto`` mode: measure on CUDA. On CPU measure only when the cell fits this machine: a
  bound of 6 N P FLOPs (N tokens, P parameters) decides without running anything; below it
  the estimate itself runs and the cell is measured only if its peak is under 25% of RAM
  and its forward + backward FLOPs under ``CPU_MEASURE_MAX_FLOPS``; otherwise that estimate
  is the result.
- ``device="auto"``: cuda if available, else cpu; an estimate for ``auto`` on a machine
  without a GPU targets cuda where this torch build can fake it (a full-size step is run
  on GPUs), else cpu; ``info.estimate_device`` says which and why.

``predicted`` holds the closed forms (``analytic/``) for the same fields. Their
structural inputs (which adapted layers read the same input, whether it needs a
gradient, how many tokens each call sees) are observed by forward pre-hooks during the
instrumented step; the arithmetic is closed-form.

Status: ``error`` (one-line reason) for anything that cannot be built or run, ``oom`` for
torch.OutOfMemoryError, MemoryError and CPU allocator failures.
"""

from __future__ import annotations

import sys
import time
import traceback

import torch

from ..model import parallel
from ..suite.cell import Cell, CellError
from ..errors import UserError, one_line
from .assemble import blank_record, failed_cell_env, fill_record
from .resolve import Plan, estimate_device, resolve
from .result import StepResult
from .step import estimate, measure

CPU_MEASURE_MAX_RAM_FRACTION = 0.25  # measure on CPU only when the predicted peak is below this share of RAM
CPU_MEASURE_MAX_FLOPS = 3e10  # forward + backward FLOPs per step: a few seconds on 2 CPU cores
OOM_MESSAGES = ("out of memory", "can't allocate memory", "not enough memory", "cannot allocate memory")

__all__ = ["run_cell", "CellError", "CPU_MEASURE_MAX_FLOPS", "CPU_MEASURE_MAX_RAM_FRACTION"]


def run_cell(cell: dict, artifacts_dir: str | None = None) -> dict:
    """Run one cell and return its record; every failure becomes a record, never an exception."""
    t0 = time.perf_counter()
    record = blank_record(cell)
    try:
        _run(cell, record, artifacts_dir)
        record["status"], record["error"] = "ok", None
    except Exception as e:  # noqa: BLE001 - the contract: a record, whatever happened
        record["status"] = "oom" if is_oom(e) else "error"
        record["error"] = one_line(e)
        if not isinstance(e, UserError):
            traceback.print_exc(file=sys.stderr)  # the launcher keeps stderr in the cell's log
        if record["env"] is None:
            record["env"] = failed_cell_env()
    record["wall_s"] = round(time.perf_counter() - t0, 3)
    return record


def is_oom(e: BaseException) -> bool:
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(e, RuntimeError) and any(m in str(e).lower() for m in OOM_MESSAGES)


def _run(cell_dict: dict, record: dict, artifacts_dir: str | None) -> None:
    if not isinstance(cell_dict, dict):
        raise CellError(f"a cell is a dict, got {type(cell_dict).__name__}")
    try:
        requested = Cell.from_dict(cell_dict)
    except (TypeError, ValueError) as e:
        raise CellError(f"invalid cell: {one_line(e)}") from None
    record["id"] = requested.id
    plan = resolve(requested, timeline=artifacts_dir is not None)
    c, device = plan.cell, plan.device
    mode_reason = f"the cell asks for {c.mode}"
    result: StepResult | None = None

    if c.mode == "measure":
        mode = "measure"
    elif c.mode == "estimate":
        mode = "estimate"
    elif parallel.is_parallel(c):
        mode, mode_reason = "estimate", "auto with parallel set: estimated (measuring needs a multi-GPU job)"
    elif device == "cuda":
        mode, mode_reason = "measure", "auto: measured on the GPU"
    else:
        mode, mode_reason, result = _auto_on_cpu(plan)

    if mode == "measure":
        with parallel.measure_job(c, device) as mesh:  # None unless a parallel cell
            result = measure(plan, artifacts_dir, mesh)
        run_device = device
    else:
        est_device, why = estimate_device(c, device)
        if result is None or result.device != est_device:
            from .depth import estimate_traced

            result, blocks, trace = estimate_traced(plan, est_device, artifacts_dir)
            if blocks is not None:  # certified depth extrapolation: the record comes from the probes
                _fill_extrapolated(record, requested, blocks, trace, est_device, why, mode_reason, c)
                return
        else:
            trace = {"mode": "full", "probe_depths": [], "reason": "auto on cpu: the estimate that chose the mode"}
        result.info["trace"] = trace
        result.info["estimate_device"] = est_device
        result.info["estimate_device_reason"] = why
        run_device = est_device

    record["cell"] = requested.to_dict()  # as asked (device "auto" stays): fed back, the same cell and id
    result.info["mode_reason"] = mode_reason
    result.info["requested"] = {"device": c.device, "mode": c.mode}
    result.info["resolved"] = {"device": run_device, "mode": mode}
    fill_record(record, plan, result, mode, run_device, artifacts_dir)


def _fill_extrapolated(record: dict, requested: Cell, blocks: dict, trace: dict, est_device: str, why: str,
                       mode_reason: str, c: Cell) -> None:
    record.update(blocks)
    record["cell"] = requested.to_dict()  # as asked; the resolution is info.resolved
    record["info"].update(trace=trace, estimate_device=est_device, estimate_device_reason=why,
                          mode_reason=mode_reason, requested={"device": c.device, "mode": c.mode},
                          resolved={"device": est_device, "mode": "estimate"})


def _auto_on_cpu(plan: Plan) -> tuple[str, str, StepResult | None]:
    """Measure on this CPU only when the cell is small: a FLOP bound first, then the estimate."""
    import psutil

    from ..model import workloads

    c = plan.cell
    ram = psutil.virtual_memory().total
    model = workloads.build_model(c, "meta")
    params = sum(p.numel() for p in model.parameters())
    tokens = c.batch * c.seq
    bound = 6 * tokens * params
    del model
    if bound > CPU_MEASURE_MAX_FLOPS:
        return "estimate", (f"auto on cpu: about 6 N P = {bound:.3g} FLOPs per step is above the "
                            f"{CPU_MEASURE_MAX_FLOPS:.3g} a few-second CPU step allows"), None
    probe = estimate(plan, "cpu")
    flops = probe.flops.forward + probe.flops.backward
    peak = max(p.live_bytes for p in probe.step_peaks.values())
    if peak < CPU_MEASURE_MAX_RAM_FRACTION * ram and flops <= CPU_MEASURE_MAX_FLOPS:
        return "measure", (f"auto on cpu: estimated peak {peak} B < {CPU_MEASURE_MAX_RAM_FRACTION:.0%} of RAM "
                           f"and {flops:.3g} step FLOPs: fits this machine"), None
    return "estimate", (f"auto on cpu: estimated peak {peak} B or {flops:.3g} step FLOPs too large to "
                        "measure here"), probe
