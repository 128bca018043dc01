"""run_cell: one cell in, one record out (the record of docs/ARCHITECTURE.md). Never raises.

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

``predicted`` holds the closed forms (``analytic.py``) for the same fields. Their
structural inputs (which adapted layers read the same input, whether it needs a
gradient, how many tokens each call sees) are observed by forward pre-hooks during the
instrumented step; the arithmetic is closed-form.

Status: ``error`` (one-line reason) for anything that cannot be built or run, ``oom`` for
torch.OutOfMemoryError, MemoryError and CPU allocator failures.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from . import analytic, parallel, precision, quant, workloads
from .cell import DEVICES, MODES, OPTIMIZERS, PRECISIONS, QUANTS, Cell

CPU_MEASURE_MAX_RAM_FRACTION = 0.25  # measure on CPU only when the predicted peak is below this share of RAM
CPU_MEASURE_MAX_FLOPS = 3e10  # forward + backward FLOPs per step: a few seconds on 2 CPU cores
SNAPSHOT_ENV = "LAMDA_BENCH_CUDA_SNAPSHOT"  # =1: write the instrumented step's CUDA memory snapshot
SERIES_KEYS = ("step", "trainable", "optimizer", "backward_flops", "peak", "ran")
OOM_MESSAGES = ("out of memory", "can't allocate memory", "not enough memory", "cannot allocate memory")


class CellError(ValueError):
    """A cell that cannot run as given (one-line message)."""


# ---------------------------------------------------------------------------------------
# the entry point
# ---------------------------------------------------------------------------------------


def run_cell(cell: dict, artifacts_dir: str | None = None) -> dict:
    """Run one cell and return its record; every failure becomes a record, never an exception."""
    t0 = time.perf_counter()
    record = _blank_record(cell)
    try:
        _run(cell, record, artifacts_dir)
        record["status"], record["error"] = "ok", None
    except Exception as e:  # noqa: BLE001 - the contract: a record, whatever happened
        record["status"] = "oom" if _is_oom(e) else "error"
        record["error"] = _one_line(e)
        if not isinstance(e, (CellError, workloads.WorkloadError, analytic.AnalyticError,
                              precision.PrecisionError)) and not _is_bad_input(e):
            traceback.print_exc(file=sys.stderr)  # the launcher keeps stderr in the cell's log
        if record["env"] is None:
            record["env"] = _failed_cell_env()
    record["wall_s"] = round(time.perf_counter() - t0, 3)
    return record


def _blank_record(cell: dict) -> dict:
    from .results import SCHEMA_VERSION

    return {
        "schema": SCHEMA_VERSION,
        "id": _cell_id(cell),
        "suite": None,
        "status": "error",
        "error": None,
        "cell": dict(cell) if isinstance(cell, dict) else {"value": repr(cell)},
        "params": {"total": None, "trainable": None, "updates": None},
        "memory": {k: None for k in (
            "weights", "trainable_weights", "grads", "optimizer", "saved_activations",
            "saved_activations_adapter", "peak_forward", "peak_backward", "peak_step", "peak",
            "at_peak", "peak_steady", "cuda_max_allocated", "cuda_max_reserved", "cuda_max_active", "nvml_used",
            "host_rss_peak")},
        "flops": {"forward": None, "backward": None, "adapter_forward": None, "adapter_backward": None,
                  "attention_counting": None},
        "time": {"step_median_s": None, "step_min_s": None, "step_max_s": None, "steps_timed": 0,
                 "tokens_per_s": None},
        "series": {k: [] for k in SERIES_KEYS},
        "predicted": None,
        "info": {},
        "artifacts": {},
        "env": None,
        "wall_s": None,
        "started_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _failed_cell_env() -> dict | None:
    """The software environment for a record that failed before its device was known."""
    from .results import environment

    try:
        return environment()
    except Exception:  # noqa: BLE001 - a failed record must still come back
        return None


def _cell_id(cell: Any) -> str | None:
    try:
        return Cell.from_dict(cell).id
    except Exception:  # noqa: BLE001 - an invalid cell still gets a record
        return None


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(e, RuntimeError) and any(m in str(e).lower() for m in OOM_MESSAGES)


def _is_bad_input(e: BaseException) -> bool:
    from .methods import MethodError

    return isinstance(e, (MethodError, parallel.ParallelError)) or type(e).__name__ in ("FakeConversionError",
                                                                                       "ResultsError")


def _one_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    if isinstance(e, (CellError, workloads.WorkloadError, analytic.AnalyticError, precision.PrecisionError)) \
            or _is_bad_input(e):
        return first or type(e).__name__
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


# ---------------------------------------------------------------------------------------
# resolution: device, mode, horizon
# ---------------------------------------------------------------------------------------


def _validate(c: Cell) -> None:
    for key, value, allowed in (("device", c.device, DEVICES), ("mode", c.mode, MODES),
                                ("optimizer", c.optimizer, OPTIMIZERS), ("precision", c.precision, PRECISIONS),
                                ("quant", c.quant, QUANTS)):  # issue 14: quantized base
        if value not in allowed:
            raise CellError(f"cell {key} {value!r} is not one of {list(allowed)}")
    for key in ("batch", "seq", "r"):
        v = getattr(c, key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise CellError(f"cell {key} must be an integer >= 1, got {v!r}")
    for key in ("steps", "warmup"):
        v = getattr(c, key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise CellError(f"cell {key} must be an integer >= 0, got {v!r}")
    workloads.torch_dtype(c.dtype)  # one-line WorkloadError for an unknown dtype
    problem = c.parallel_problem()
    if problem:
        raise CellError(problem)


def _resolve_device(c: Cell) -> str:
    if c.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if c.device == "cuda" and c.mode != "estimate" and not torch.cuda.is_available():
        why = (f"this torch build ({torch.__version__}) has no CUDA support" if torch.version.cuda is None
               else "no CUDA device is visible here")
        from .fake import fake_device_supported

        estimate = ", or mode = 'estimate'" if fake_device_supported("cuda") else ""
        raise CellError(f"device 'cuda' (mode {c.mode}): {why}; use device = 'cpu' or 'auto'{estimate}")
    return c.device


def _estimate_device(c: Cell, device: str) -> tuple[str, str]:
    """(device the fake tensors live on, why)."""
    from .fake import fake_device_supported

    if c.device != "auto":
        return c.device, f"the cell asks for {c.device}"
    if device == "cuda":
        return "cuda", "auto: a GPU is present"
    if fake_device_supported("cuda"):
        return "cuda", "auto on a machine without a GPU: estimated for cuda, the device a full-size step runs on"
    return "cpu", (f"auto on a machine without a GPU; this torch build ({torch.__version__}) cannot fake cuda "
                   "tensors, so the estimate follows the cpu kernels")


def _split_options(c: Cell) -> tuple[dict, int | None]:
    """(method options, total_steps override): ``total_steps`` is a run setting, not a method's."""
    opts = dict(c.options)
    horizon = opts.pop("total_steps", None)
    if horizon is not None and (isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1):
        raise CellError(f"option total_steps must be an integer >= 1, got {horizon!r}")
    return opts, horizon


# ---------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------


def _run(cell_dict: dict, record: dict, artifacts_dir: str | None) -> None:
    if not isinstance(cell_dict, dict):
        raise CellError(f"a cell is a dict, got {type(cell_dict).__name__}")
    try:
        c = Cell.from_dict(cell_dict)
    except (TypeError, ValueError) as e:
        raise CellError(f"invalid cell: {_one_line(e)}") from None
    record["id"] = c.id
    _validate(c)
    requested = c
    # The fp32 policy builds the model in fp32 whatever the dtype; the record keeps the cell as asked.
    c = dataclasses.replace(c, dtype=precision.build_dtype(precision.get_policy(c.precision), c.dtype))
    workloads.get_workload(c.workload)  # unknown workload: one line, before any build
    device = _resolve_device(c)
    mode_reason = f"the cell asks for {c.mode}"
    result: _StepResult | None = None

    if c.mode == "measure":
        mode = "measure"
    elif c.mode == "estimate":
        mode = "estimate"
    elif parallel.is_parallel(c):
        mode, mode_reason = "estimate", "auto with parallel set: estimated (measuring needs a multi-GPU job)"
    elif device == "cuda":
        mode, mode_reason = "measure", "auto: measured on the GPU"
    else:
        mode, mode_reason, result = _auto_on_cpu(c, timeline=artifacts_dir is not None)

    if mode == "measure":
        with parallel.measure_job(c, device) as mesh:  # None unless a parallel cell
            result = _measure(c, device, artifacts_dir, mesh)
        run_device = device
    else:
        est_device, why = _estimate_device(c, device)
        if result is None or result.device != est_device:
            result = _estimate(c, est_device, timeline=artifacts_dir is not None)
        result.info["estimate_device"] = est_device
        result.info["estimate_device_reason"] = why
        run_device = est_device

    resolved = requested.to_dict()
    resolved["device"], resolved["mode"] = run_device, mode
    record["cell"] = resolved
    result.info["mode_reason"] = mode_reason
    result.info["requested"] = {"device": c.device, "mode": c.mode}
    _fill_record(record, c, result, mode, run_device, artifacts_dir)


def _auto_on_cpu(c: Cell, timeline: bool) -> tuple[str, str, "_StepResult | None"]:
    """Measure on this CPU only when the cell is small: a FLOP bound first, then the estimate."""
    import psutil

    ram = psutil.virtual_memory().total
    model = workloads.build_model(c, "meta")
    params = sum(p.numel() for p in model.parameters())
    tokens = c.batch * c.seq
    bound = 6 * tokens * params
    del model
    if bound > CPU_MEASURE_MAX_FLOPS:
        return "estimate", (f"auto on cpu: about 6 N P = {bound:.3g} FLOPs per step is above the "
                            f"{CPU_MEASURE_MAX_FLOPS:.3g} a few-second CPU step allows"), None
    probe = _estimate(c, "cpu", timeline)
    flops = probe.flops.forward + probe.flops.backward
    peak = max(p.live_bytes for p in probe.step_peaks.values())
    if peak < CPU_MEASURE_MAX_RAM_FRACTION * ram and flops <= CPU_MEASURE_MAX_FLOPS:
        return "measure", (f"auto on cpu: estimated peak {peak} B < {CPU_MEASURE_MAX_RAM_FRACTION:.0%} of RAM "
                           f"and {flops:.3g} step FLOPs: fits this machine"), None
    return "estimate", (f"auto on cpu: estimated peak {peak} B or {flops:.3g} step FLOPs too large to "
                        "measure here"), probe


class _StepResult:
    """What one run produced, before it becomes a record."""

    def __init__(self) -> None:
        self.device = "cpu"
        self.applied = None
        self.saved = None
        self.live = None
        self.flops = None
        self.calls: list[analytic.AdaptedLinear] = []
        self.layers: list[analytic.AdaptedLinear] = []
        self.grads_bytes = 0
        self.weights_bytes = 0
        self.series: dict[str, list] = {k: [] for k in SERIES_KEYS}
        self.timing = None
        self.snapshot: str | None = None
        self.device_memory: dict[str, int | None] = {}
        self.info: dict[str, Any] = {}
        self.horizon = 1
        self.instrumented_step = 1
        self.step_peaks: dict[int, Any] = {}  # step -> live.Peak, for the steps tracked (peaks.py)
        self.untracked_peak_steps: list[int] = []
        self.sharded_prediction: dict | None = None  # parallel cells: rank 0's closed forms (parallel.predicted)
        self.precision = precision.PrecisionRun()  # the cell's policy: forward context, backward, step


def _prepare(c: Cell, build_device: str) -> tuple[Any, Any, int]:
    """Build the model, apply the method; (applied, spec, horizon)."""
    from .methods import AdapterSpec, get_method

    method = get_method(c.method)
    options, horizon = _split_options(c)
    horizon = horizon or (c.warmup + 1 + c.steps)
    model = workloads.build_model(c, build_device)
    qformat = quant.quantize_base(model, c.quant, c.parallel)  # issue 14: quantized frozen base, before the adapter
    targets = workloads.resolve_targets(c, model)
    if c.gradient_checkpointing:
        _enable_checkpointing(model, c.workload)
    spec = AdapterSpec(r=c.r, alpha=c.alpha, targets=targets, dtype=workloads.torch_dtype(c.dtype),
                       options=options, total_steps=horizon, seed=c.seed)
    # On meta, modules the method creates (PEFT's lora_A / lora_B) must be created on meta
    # too: PEFT builds them on cpu first otherwise, which costs seconds at full size.
    ctx = torch.device("meta") if build_device == "meta" else contextlib.nullcontext()
    with ctx, quant.float_base_for_init(model, qformat, method, targets):  # issue 14: QPiSSA-style residual
        applied = method.apply(model, spec)
    precision.cast_trainable(applied.model, precision.get_policy(c.precision))  # before the optimizer exists
    return applied, spec, horizon


def _enable_checkpointing(model: nn.Module, workload: str) -> None:
    """transformers' activation checkpointing, non-reentrant (what a fine-tuner would use).

    transformers 5.x renamed ``gradient_checkpointing_enable`` (now a deprecated alias) to
    ``activation_checkpointing_enable``; both do the same, the newer name is used where it exists.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    elif hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        raise CellError(f"gradient_checkpointing needs a transformers model; workload {workload!r} has none")


def _make_optimizer(c: Cell, applied, for_cuda: bool) -> torch.optim.Optimizer:
    """The method's optimizer. For a CUDA target it runs the multi-tensor (foreach) path:
    torch picks it by default for CUDA tensors but not for fake ones, and its temporaries are
    large for full fine-tuning (an estimate was 0.75 GiB under the H100 measurement without it)."""
    if c.optimizer == "adamw":
        optimizer = applied.make_optimizer(c.lr)
    else:
        optimizer = torch.optim.SGD(applied.trainable_parameters(), lr=c.lr)
    if for_cuda:
        for group in optimizer.param_groups:
            if "foreach" in group:
                group["foreach"] = True
    return optimizer


# ---- measure ---------------------------------------------------------------------------


def _measure(c: Cell, device: str, artifacts_dir: str | None = None, mesh=None) -> _StepResult:
    from .measure import FlopCounter, device as devmem, synchronizer, time_steps

    res = _StepResult()
    res.device = device
    dev = torch.device(device)
    res.precision = precision.start(c.precision, dev.type, fake=False)
    applied, spec, res.horizon = _prepare(c, device)
    res.applied = applied
    if mesh is not None:  # a parallel cell at world_size 1: a real one-rank group
        res.info["parallel"] = parallel.shard(applied, mesh, c.reshard_after_forward)
        res.info["parallel"]["process_group"] = "real, one rank"
    inputs = workloads.make_inputs(c, device)
    optimizer = _make_optimizer(c, applied, for_cuda=dev.type == "cuda")
    devmem.warm_up_blas(dev, workloads.torch_dtype(c.dtype))
    timeline = artifacts_dir is not None

    # Allocator peaks cover the whole run: its first steps can be its worst (peaks.py).
    devmem.reset_peaks(dev)
    res.instrumented_step = c.warmup + 1
    # Timed steps are never tracked (the trackers would be timed too).
    tracked = set(_extra_peak_steps(c, applied, res, trackable=set(range(1, c.warmup + 1))))
    step = 0
    for _ in range(c.warmup):
        step += 1
        if step in tracked:
            _tracked_step(c, applied, inputs, optimizer, res, step)
            continue
        with FlopCounter(applied.model, applied.is_adapter_module) as fc:
            _train_step(c, applied, inputs, optimizer, res, step, fc)

    step += 1
    snapshot = _snapshot_path(c, artifacts_dir) if dev.type == "cuda" else None
    if snapshot is not None and devmem.start_memory_history(dev):
        _instrumented_step(c, applied, inputs, optimizer, res, step, timeline)
        snapshot.parent.mkdir(parents=True, exist_ok=True)
        devmem.dump_memory_history(dev, str(snapshot))
        res.snapshot = f"snapshots/{snapshot.name}"
    else:
        _instrumented_step(c, applied, inputs, optimizer, res, step, timeline)

    if c.steps > 0:
        counter = {"step": step}

        def timed() -> None:
            counter["step"] += 1
            _train_step(c, applied, inputs, optimizer, res, counter["step"], None)

        res.timing = time_steps(timed, warmup=0, repeats=c.steps, sync=synchronizer(dev))
    res.device_memory = devmem.cuda_peaks(dev)
    res.device_memory["nvml_used"] = devmem.nvml_used(dev)
    res.device_memory["host_rss_peak"] = devmem.host_rss_peak() if dev.type == "cpu" else None
    return res


def _snapshot_path(c: Cell, artifacts_dir: str | None) -> Path | None:
    """Where the CUDA memory snapshot of the instrumented step goes, when asked for with
    LAMDA_BENCH_CUDA_SNAPSHOT=1 (a pickle for pytorch.org/memory_viz; can be large)."""
    if not artifacts_dir or os.environ.get(SNAPSHOT_ENV, "") in ("", "0"):
        return None
    return Path(artifacts_dir) / "snapshots" / f"{c.id}.pickle"


# ---- estimate --------------------------------------------------------------------------


def _estimate(c: Cell, device: str, timeline: bool = True) -> _StepResult:
    from .fake import to_fake

    res = _StepResult()
    res.device = device
    res.precision = precision.start(c.precision, torch.device(device).type, fake=True)
    job = contextlib.nullcontext()
    if parallel.is_parallel(c):
        parallel.check_estimate(c)
        job = parallel.fake_job(c.world_size, device)  # before the fake mode: the mesh must be real
    applied, spec, res.horizon = _prepare(c, "meta")
    res.applied = applied
    fake_mode = to_fake(applied.model, device)
    with job as mesh, fake_mode:
        if mesh is not None:
            res.info["parallel"] = parallel.shard(applied, mesh, c.reshard_after_forward)
        inputs = workloads.make_inputs(c, device)
        # An estimate targets CUDA unless the cell asks for the CPU, even where this torch
        # build can only fake cpu tensors (info.estimate_device says which kernels ran).
        optimizer = _make_optimizer(c, applied, for_cuda=c.device != "cpu")
        res.info["optimizer_foreach"] = c.device != "cpu"
        res.instrumented_step = c.warmup + 1
        tracked = set(_extra_peak_steps(c, applied, res, trackable=None))
        for step in range(1, c.warmup + c.steps + 2):
            if step == res.instrumented_step:
                _instrumented_step(c, applied, inputs, optimizer, res, step, timeline)
            elif step in tracked:  # a step that can hold the run's peak
                _tracked_step(c, applied, inputs, optimizer, res, step)
            else:  # not run: the schedule advances; the optimizer state is primed once
                _record_before(res, applied, step, ran=False)
                if step == 1:
                    _prime_optimizer(applied, optimizer)
                _record_after(res, optimizer, None)
                applied.on_step(step, optimizer)
    res.info["estimate"] = (
        "fake tensors: forward and backward ran for the instrumented step and the steps that can hold "
        "the run's peak (info.peak_steps) only; optimizer state before the first step that ran primed as "
        "one optimizer step on zero gradients leaves it; other steps advance the method's schedule without running"
    )
    return res


def _drop_input_grads(inputs: dict) -> None:
    """The bare linear workload's input requires grad (it stands for an activation deep in a
    network); its .grad would otherwise persist from step to step, a buffer no real network
    keeps and that the trackers, which start at the instrumented step, cannot see."""
    for t in inputs.values():
        if isinstance(t, torch.Tensor) and t.grad is not None:
            t.grad = None


def _prime_optimizer(applied, optimizer: torch.optim.Optimizer) -> None:
    """Create the optimizer state a first step leaves behind, without a forward or backward.

    torch's Adam and AdamW get their state written directly, as their ``_init_group``
    creates it and their first step leaves it (``step`` = 1, zero moments): on a fake
    full-size model a real step costs about a second of fake kernels for state that is
    all zeros anyway. Any other optimizer (LoRA-FA's, SGD) takes one step on zero gradients.
    """
    if type(optimizer) in (torch.optim.Adam, torch.optim.AdamW):
        _prime_adam(optimizer)
        return
    for p in applied.trainable_parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _prime_adam(optimizer: torch.optim.Optimizer) -> None:
    """Adam/AdamW state after one step on zero gradients (tests compare it with a real step)."""
    default_scalar = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
    for group in optimizer.param_groups:
        on_device = group["capturable"] or group["fused"]
        for p in group["params"]:
            if not p.requires_grad or optimizer.state[p]:
                continue
            state = optimizer.state[p]
            # step: a cpu scalar unless capturable or fused (then on the parameter's device)
            state["step"] = (torch.ones((), dtype=torch.float32 if group["fused"] else default_scalar, device=p.device)
                             if on_device else torch.tensor(1.0, dtype=default_scalar, device="cpu"))
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


# ---- one step --------------------------------------------------------------------------


def _train_step(c: Cell, applied, inputs, optimizer, res: _StepResult, step: int, flops,
                live=None, saved=None, on_grads: Callable[[], None] | None = None, finish: bool = True) -> None:
    """forward, loss, backward, optimizer step; trackers' phases marked where given.

    ``finish=False`` leaves the method's ``on_step`` and the series entry to the caller
    (the instrumented step runs them after its trackers have exited).
    """

    def phase(name: str):
        stack = contextlib.ExitStack()
        for tracker in (live, flops, saved):
            if tracker is not None:
                stack.enter_context(tracker.phase(name))
        return stack

    _record_before(res, applied, step, ran=True)
    with phase("forward"), res.precision.forward():
        loss = workloads.compute_loss(c, applied.model, inputs)
    with phase("backward"):
        res.precision.backward(loss)
    del loss
    if on_grads is not None:
        on_grads()
    with phase("optimizer"):
        res.precision.step(optimizer)
        optimizer.zero_grad(set_to_none=True)
        _drop_input_grads(inputs)
    if finish:
        _finish_step(applied, optimizer, res, step, flops)


def _finish_step(applied, optimizer, res: _StepResult, step: int, flops) -> None:
    """The series entry (optimizer state as the step left it, while it is live), then the
    method's per-step hook.

    LaMDA's freezing moves parameters and releases optimizer state here: run it outside
    the live tracker, or the new parameter storages would count as step temporaries.
    """
    _record_after(res, optimizer, flops.backward if flops is not None else None)
    applied.on_step(step, optimizer)


def _tracked_step(c: Cell, applied, inputs, optimizer, res: _StepResult, step: int) -> None:
    """A step that can hold the run's peak (``peaks.py``): live bytes and FLOPs tracked, no
    timeline, no saved-tensor tracker."""
    from .measure import FlopCounter, LiveMemoryTracker, ModuleScope

    scope = ModuleScope(applied.model)
    live = LiveMemoryTracker(applied.model, optimizer, scope=scope, timeline=False, inputs=inputs)
    flops = FlopCounter(applied.model, applied.is_adapter_module, scope=scope)
    with flops, live:
        _train_step(c, applied, inputs, optimizer, res, step, flops, live=live, finish=False)
    _finish_step(applied, optimizer, res, step, flops)
    _note_step_peak(res, step, live.peak)


def _note_step_peak(res: _StepResult, step: int, peak) -> None:
    res.step_peaks[step] = peak
    res.series["peak"][res.series["step"].index(step)] = peak.live_bytes


def _extra_peak_steps(c: Cell, applied, res: _StepResult, trackable: set[int] | None) -> list[int]:
    """The steps besides the instrumented one that can hold the run's peak and can be tracked."""
    from .peaks import steps_to_track

    extra, res.untracked_peak_steps = steps_to_track(
        applied.trainable_shrinks, c.warmup + 1 + c.steps, res.instrumented_step, trackable)
    return extra


def _instrumented_step(c: Cell, applied, inputs, optimizer, res: _StepResult, step: int, timeline: bool) -> None:
    """The step with every tracker on. The module-boundary timeline (about 0.5 s of hooks on a
    full-size model) is kept only when there is an artifacts dir to write it to."""
    from .measure import FlopCounter, LiveMemoryTracker, ModuleScope, SavedTensorTracker

    model = applied.model
    adapted = set(applied.adapted)
    scope = ModuleScope(model)
    saved = SavedTensorTracker(model, applied.is_adapter_module, scope=scope, keep_tensors=False)
    observer = _InputObserver(applied, saved)

    def on_timeline(name: str) -> bool:
        return name in adapted

    live = LiveMemoryTracker(model, optimizer, scope=scope, timeline=timeline, timeline_filter=on_timeline,
                            inputs=inputs)
    saved.is_weight_copy = live.is_weight_copy  # autocast's weight casts: saved apart from activations
    flops = FlopCounter(model, applied.is_adapter_module, scope=scope)

    def grads_done() -> None:
        res.grads_bytes = _unique_bytes(p.grad for p in model.parameters() if p.grad is not None)

    sharded = parallel.track_fsdp(live) if parallel.is_parallel(c) else contextlib.nullcontext()
    with observer, saved, flops, live, sharded:
        _train_step(c, applied, inputs, optimizer, res, step, flops, live=live, saved=saved, on_grads=grads_done,
                    finish=False)
    # Read now: the live tracker's free callbacks outlive it, and on_step replaces parameters.
    res.weights_bytes = live.current["weights"]
    if parallel.is_parallel(c):  # the trainable set this step trained (memory.optimizer's moment)
        res.sharded_prediction = parallel.predicted(applied, c)
    _finish_step(applied, optimizer, res, step, flops)
    _note_step_peak(res, step, live.peak)
    res.saved, res.live, res.flops = saved, live, flops
    res.calls, res.layers = observer.calls, observer.layers
    res.info["optimizer_class"] = type(optimizer).__name__


class _InputObserver:
    """Forward pre-hooks on the adapted modules: the structure the closed forms need.

    One ``AdaptedLinear`` per call (tokens = rows of the input, whether it needs a gradient,
    which calls share one input storage) and one per module (for parameter counts).
    """

    def __init__(self, applied, saved) -> None:
        from torch.utils.weak import WeakIdKeyDictionary

        self.applied = applied
        self.saved = saved
        self.calls: list[analytic.AdaptedLinear] = []
        self.layers: list[analytic.AdaptedLinear] = []
        self._groups = WeakIdKeyDictionary()
        self._handles: list = []

    def __enter__(self) -> "_InputObserver":
        self.layers = [
            analytic.AdaptedLinear(*_linear_shape(m), r=_module_rank(m), name=n)
            for n, m in self.applied.adapted.items()
        ]
        for name, module in self.applied.adapted.items():
            self._handles.append(module.register_forward_pre_hook(self._hook(name, module)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _hook(self, name: str, module: nn.Module):
        d_in, d_out = _linear_shape(module)
        rank = _module_rank(module)

        def pre(mod, args):
            if torch._C._current_graph_task_id() != -1 or not args or not isinstance(args[0], torch.Tensor):
                return  # checkpoint recomputation in backward, or an unexpected call
            x = args[0]
            storage = x.untyped_storage()
            group = self._groups.get(storage)
            if group is None:
                group = f"input{len(self._groups)}"
                self._groups[storage] = group
            self.calls.append(analytic.AdaptedLinear(
                d_in, d_out, r=rank, input_requires_grad=bool(x.requires_grad), input_group=group,
                name=name, tokens=x.numel() // d_in, input_itemsize=x.element_size(),
                input_saved_by_base=self.saved.has_saved(storage),
            ))

        return pre


def _linear_shape(module: nn.Module) -> tuple[int, int]:
    base = getattr(module, "base_layer", module)
    return int(base.in_features), int(base.out_features)


def _module_rank(module: nn.Module) -> int | None:
    r = getattr(module, "r", None)
    if isinstance(r, dict):
        r = r.get("default")
    return r if isinstance(r, int) else None


def _adapter_itemsize(applied) -> int | None:
    """Bytes per element of the adapter weights (PEFT keeps them fp32 under autocast)."""
    for prefix, module in applied.adapted.items():
        for name, p in module.named_parameters(prefix=prefix):
            if applied.is_adapter_module(name.rsplit(".", 1)[0]):
                return p.element_size()
    return None


# ---- series ----------------------------------------------------------------------------


def _record_before(res: _StepResult, applied, step: int, ran: bool) -> None:
    res.series["step"].append(step)
    res.series["trainable"].append(applied.num_trainable())
    res.series["peak"].append(None)  # set for the steps run with the live tracker
    res.series["ran"].append(ran)


def _record_after(res: _StepResult, optimizer: torch.optim.Optimizer, backward_flops: int | None) -> None:
    res.series["optimizer"].append(_optimizer_bytes(optimizer))
    res.series["backward_flops"].append(backward_flops)


def _optimizer_bytes(optimizer: torch.optim.Optimizer) -> int:
    return _unique_bytes(v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor))


def _unique_bytes(tensors) -> int:
    seen: set[int] = set()
    total = 0
    for t in tensors:
        st = parallel.local(t).untyped_storage()
        if id(st) not in seen:
            seen.add(id(st))
            total += st.nbytes()
    return total


# ---------------------------------------------------------------------------------------
# the record
# ---------------------------------------------------------------------------------------


def _fill_record(record: dict, c: Cell, res: _StepResult, mode: str, device: str, artifacts_dir: str | None) -> None:
    applied, live, saved, flops = res.applied, res.live, res.saved, res.flops
    series = res.series
    record["params"] = {
        "total": applied.num_total(),
        "trainable": series["trainable"][0],
        "updates": sum(series["trainable"]),
    }
    from .peaks import run_peak_fields

    peaks = live.phase_peaks
    run_peak, res.info["peak_steps"] = run_peak_fields(res.step_peaks, res.instrumented_step,
                                                       applied.trainable_shrinks, res.untracked_peak_steps)
    record["memory"] = {
        "weights": res.weights_bytes,
        "trainable_weights": live.trainable_weights,
        "grads": res.grads_bytes,
        "optimizer": series["optimizer"][series["step"].index(res.instrumented_step)],
        "saved_activations": saved.total_bytes,
        "saved_activations_adapter": saved.adapter_bytes,
        "peak_forward": peaks["forward"].live_bytes if "forward" in peaks else None,
        "peak_backward": peaks["backward"].live_bytes if "backward" in peaks else None,
        "peak_step": peaks["optimizer"].live_bytes if "optimizer" in peaks else None,
        **run_peak,  # peak and at_peak over the run's steps, peak_steady the instrumented step's
        "cuda_max_allocated": res.device_memory.get("cuda_max_allocated"),
        "cuda_max_reserved": res.device_memory.get("cuda_max_reserved"),
        "cuda_max_active": res.device_memory.get("cuda_max_active"),
        "nvml_used": res.device_memory.get("nvml_used"),
        "host_rss_peak": res.device_memory.get("host_rss_peak"),
    }
    if parallel.is_parallel(c):
        record["memory"].update(parallel.rank_memory(live))
    if saved.discarded_bytes:  # graphs dropped in forward (DoRA's weight-norm path): saved, never kept
        record["memory"]["saved_discarded"] = saved.discarded_bytes
        record["memory"]["saved_discarded_adapter"] = saved.discarded_adapter_bytes
    if c.gradient_checkpointing:
        record["memory"]["saved_recomputed"] = saved.recomputed_bytes
        record["memory"]["saved_recomputed_adapter"] = saved.recomputed_adapter_bytes
    if res.precision.policy.autocast_dtype is not None:  # autocast's weight casts: temporaries, said apart
        record["memory"].update(autocast_weight_copies=live.weight_copies_peak,
                                autocast_weight_copies_at_peak=live.weight_copies_at_peak,
                                saved_autocast_weight_copies=saved.weight_copy_bytes)
    from .measure import ATTENTION_COUNTING

    record["flops"] = {
        "forward": flops.forward,
        "backward": flops.backward,
        "adapter_forward": flops.adapter_forward,
        "adapter_backward": flops.adapter_backward,
        "attention_counting": ATTENTION_COUNTING,
    }
    tokens = c.batch * c.seq
    t = res.timing
    record["time"] = {
        "step_median_s": t.median_s if t else None,
        "step_min_s": t.min_s if t else None,
        "step_max_s": t.max_s if t else None,
        "steps_timed": len(t.times_s) if t else 0,
        "tokens_per_s": tokens / t.median_s if t and t.median_s > 0 else None,
    }
    record["series"] = series
    record["predicted"] = _predicted(c, res)
    if parallel.is_parallel(c) and isinstance(record["predicted"], dict):
        record["predicted"]["sharded"] = res.sharded_prediction
    record["info"] = _info(c, res)
    record["env"] = _env(device, mode, applied)
    if artifacts_dir:
        record["artifacts"] = _write_artifacts(Path(artifacts_dir), record["id"], res)
        if res.snapshot:
            record["artifacts"]["cuda_snapshot"] = res.snapshot


def _predicted(c: Cell, res: _StepResult) -> dict:
    applied = res.applied
    method = c.method
    info = applied.info
    b_schedule = None
    if method in analytic.LAMDA_LIKE and info.get("freeze_mode", "split") == "split":
        from .methods.lamda import FreezeSchedule

        fraction = float(info.get("freeze_fraction", 0.3))

        def b_schedule(rank: int, step: int) -> int:
            return FreezeSchedule(rank, res.horizon, fraction).trainable(step)

    itemsize = _adapter_itemsize(applied)
    calls = res.calls
    input_itemsize = calls[0].input_itemsize if calls else workloads.torch_dtype(c.dtype).itemsize
    try:
        pred = analytic.predict(
            method, res.layers, c.r, c.batch * c.seq,
            calls=calls,
            steps=len(res.series["step"]),
            accounted_step=res.instrumented_step - 1,
            adapter_itemsize=itemsize or input_itemsize,
            input_itemsize=input_itemsize,
            b_schedule=b_schedule,
            total_params=applied.num_total() if method == "full" else None,
            dropout=float(info.get("dropout", 0.0) or 0.0),
            gradient_checkpointing=c.gradient_checkpointing,
        )
    except analytic.AnalyticError as e:
        return {"error": str(e)}
    pred["memory"].update(precision.predict_state(c, res, b_schedule))
    if res.precision.policy.autocast_dtype is not None:  # autocast's casts in the adapter path: not modelled
        pred["memory"]["saved_activations_adapter"] = None
    pred["assumptions"] = "see lamda_bench/analytic.py; structure (shared inputs, input grads, tokens per call) observed"
    return pred


def _info(c: Cell, res: _StepResult) -> dict:
    applied = res.applied
    info = dict(res.info)
    info["attn_implementation"] = workloads.attention_implementation(applied.model)
    info["model"] = workloads.model_facts(c)  # config source + hash + the shape fields that decide memory
    info["attention_kernels"] = sorted(res.flops.attention_ops)
    info["autocast_adapter_dtype"] = applied.info.get("autocast_adapter_dtype")
    info["precision"] = res.precision.policy.to_info()
    info["quant"] = quant.describe(applied.model)  # issue 14: None for an unquantized base
    info["method"] = applied.info
    info["steps"] = {"warmup": c.warmup, "instrumented_step": res.instrumented_step, "timed": c.steps,
                     "total_steps": res.horizon}
    info["tracked_adapted_calls"] = len(res.calls)
    return info


def _env(device: str, mode: str, applied) -> dict:
    from .measure import device as devmem
    from .results import environment

    if mode == "estimate":
        name = device_class = f"fake {device} (estimate)"
    elif device == "cuda":
        name = device_class = devmem.device_name(device)
    else:
        name, device_class = _cpu_name(), "cpu"
    return environment(
        device_name=name,
        device_class=device_class,
        driver=devmem.driver_version() if device == "cuda" and mode == "measure" else None,
        cuda=torch.version.cuda,
        autocast_adapter_dtype=applied.info.get("autocast_adapter_dtype"),
        cpu_threads=torch.get_num_threads(),
    )


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _write_artifacts(out: Path, cell_id: str, res: _StepResult) -> dict:
    timeline = {"id": cell_id, "unit": "bytes", "events": res.live.timeline}
    detail = {
        "id": cell_id,
        "saved_by_module": res.saved.by_module,
        "flops_by_module": {k: dict(v) for k, v in res.flops.by_module.items()},
        "flops_by_op": {k: dict(v) for k, v in res.flops.by_op.items()},
        "adapted_calls": [dataclasses.asdict(x) for x in res.calls],
    }
    paths = {"timeline": f"timelines/{cell_id}.json", "detail": f"detail/{cell_id}.json"}
    for key, payload in (("timeline", timeline), ("detail", detail)):
        path = out / paths[key]
        path.parent.mkdir(parents=True, exist_ok=True)
        # A temp name of this process alone, renamed into place: a reader never sees half a
        # file, and two processes never write through one temp file.
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(json.dumps(payload, separators=(",", ":"), default=str))
            os.chmod(tmp, 0o644)  # mkstemp makes it private; side files are ordinary shared files
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return paths
