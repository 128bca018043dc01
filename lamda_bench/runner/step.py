"""The step loop: a run's steps (warmup, instrumented, timed; or, for an estimate, the steps
that run on fake tensors and the ones that only advance the schedule), each a forward, loss,
backward and optimizer step with the trackers its place in the run calls for.

``measure`` and ``estimate`` fill one ``StepResult``; ``runner/__init__.py`` says what a run is.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..model import parallel
from ..model import precision
from ..model import workloads
from ..model import moe
from ..model import offload
from ..suite.cell import Cell
from ..measure import StepTrackers
from ..measure.garbage import CyclicGarbage
from ..optimizers.build import is_paged
from .build import make_optimizer, prepare, prime_optimizer
from .observe import InputObserver
from .resolve import Plan
from .result import StepResult

SNAPSHOT_ENV = "LAMDA_BENCH_CUDA_SNAPSHOT"  # =1: write the instrumented step's CUDA memory snapshot


@dataclass
class Loop:
    """What every step of one run shares."""

    cell: Cell
    applied: Any  # methods.base.AppliedMethod
    inputs: dict
    optimizer: torch.optim.Optimizer
    result: StepResult


# ---- measure ---------------------------------------------------------------------------


def measure(plan: Plan, artifacts_dir: str | None = None, mesh=None) -> StepResult:
    from ..measure import device as devmem, synchronizer, time_steps

    c, device = plan.cell, plan.device
    res = StepResult(device=device, horizon=plan.horizon)
    dev = torch.device(device)
    res.precision = precision.start(c.precision, dev.type, fake=False)
    applied, spec = prepare(plan, device)
    res.applied = applied
    if mesh is not None:  # a parallel cell at world_size 1: a real one-rank group
        res.info["parallel"] = parallel.shard(applied, mesh, c.reshard_after_forward)
        res.info["parallel"]["process_group"] = "real, one rank"
    inputs = workloads.make_inputs(c, device)
    optimizer = make_optimizer(c, applied, for_cuda=dev.type == "cuda")
    res.info["optimizer_paged_target"] = dev.type == "cuda"  # paged optimizers page on a GPU only
    loop = Loop(c, applied, inputs, optimizer, res)
    devmem.warm_up_blas(dev, plan.dtype)

    # Allocator peaks cover the whole run: its first steps can be its worst (peaks.py).
    devmem.reset_peaks(dev)
    res.instrumented_step = c.warmup + 1
    # Timed steps are never tracked (the trackers would be timed too).
    tracked = set(extra_peak_steps(loop, trackable=set(range(1, c.warmup + 1))))
    step = 0
    for _ in range(c.warmup):
        step += 1
        if step in tracked:
            tracked_step(loop, step)
            continue
        with StepTrackers(applied.model, applied.is_adapter_module, saved=False, live=False) as trackers:
            train_step(loop, step, trackers)
            finish_step(loop, step, trackers.flops)

    step += 1
    snapshot = snapshot_path(c, artifacts_dir) if dev.type == "cuda" else None
    if snapshot is not None and devmem.start_memory_history(dev):
        instrumented_step(loop, step, plan.timeline)
        snapshot.parent.mkdir(parents=True, exist_ok=True)
        devmem.dump_memory_history(dev, str(snapshot))
        res.snapshot = f"snapshots/{snapshot.name}"
    else:
        instrumented_step(loop, step, plan.timeline)

    if c.steps > 0:
        counter = {"step": step}

        def timed() -> None:
            counter["step"] += 1
            train_step(loop, counter["step"])
            finish_step(loop, counter["step"], None)

        res.timing = time_steps(timed, warmup=0, repeats=c.steps, sync=synchronizer(dev))
    res.device_memory = devmem.cuda_peaks(dev)
    res.device_memory["nvml_used"] = devmem.nvml_used(dev)
    res.device_memory["host_rss_peak"] = devmem.host_rss_peak() if dev.type == "cpu" else None
    return res


def snapshot_path(c: Cell, artifacts_dir: str | None) -> Path | None:
    """Where the CUDA memory snapshot of the instrumented step goes, when asked for with
    LAMDA_BENCH_CUDA_SNAPSHOT=1 (a pickle for pytorch.org/memory_viz; can be large)."""
    if not artifacts_dir or os.environ.get(SNAPSHOT_ENV, "") in ("", "0"):
        return None
    return Path(artifacts_dir) / "snapshots" / f"{c.id}.pickle"


# ---- estimate --------------------------------------------------------------------------


def estimate(plan: Plan, device: str, probe: bool = False) -> StepResult:
    """The run on fake tensors on ``device`` (the estimate's target device). A depth probe
    (``depth.py``) keeps each tracked step's event log."""
    from ..model.fake import to_fake

    c = plan.cell
    res = StepResult(device=device, horizon=plan.horizon)
    if probe:
        res.event_logs = {}
    res.precision = precision.start(c.precision, torch.device(device).type, fake=True)
    job = contextlib.nullcontext()
    if parallel.is_parallel(c):
        parallel.check_estimate(c)
        job = parallel.fake_job(c.world_size, device)  # before the fake mode: the mesh must be real
    applied, spec = prepare(plan, "meta")
    res.applied = applied
    if moe.experts_modules(applied.model):  # MoE: refuse the routing-shaped eager loop; fp32/fp16 grouped_mm
        moe.check_estimate(applied.model, c.workload)
        moe.allow_fake_grouped_mm_any_dtype()
    fake_mode = to_fake(applied.model, device)
    with job as mesh, fake_mode:
        if mesh is not None:
            res.info["parallel"] = parallel.shard(applied, mesh, c.reshard_after_forward)
        inputs = workloads.make_inputs(c, device)
        # An estimate targets CUDA unless the cell asks for the CPU, even where this torch
        # build can only fake cpu tensors (info.estimate_device says which kernels ran).
        optimizer = make_optimizer(c, applied, for_cuda=c.device != "cpu")
        loop = Loop(c, applied, inputs, optimizer, res)
        res.info["optimizer_foreach"] = c.device != "cpu"
        res.info["optimizer_paged_target"] = c.device != "cpu"  # the run stands for a GPU run: paged as there
        res.instrumented_step = c.warmup + 1
        # The steps a measurement of this cell can track (not its timed ones): with warmup = 0 the
        # steady-state step 2 is timed there, so both answer step 1 and name step 2 untracked.
        tracked = set(extra_peak_steps(loop, trackable=set(range(1, c.warmup + 1))))
        for step in range(1, c.warmup + c.steps + 2):
            if step == res.instrumented_step:
                instrumented_step(loop, step, plan.timeline)
            elif step in tracked:  # a step that can hold the run's peak
                tracked_step(loop, step)
            else:  # not run: the schedule advances; the optimizer state is primed once
                record_before(loop, step, ran=False)
                if step == 1:
                    prime_optimizer(applied, optimizer)
                record_after(loop, None)
                applied.on_step(step, optimizer)
    res.info["estimate"] = (
        "fake tensors: forward and backward ran for the instrumented step and the steps that can hold "
        "the run's peak (info.peak_steps) only; optimizer state before the first step that ran primed as "
        "one optimizer step on zero gradients leaves it; other steps advance the method's schedule without running"
    )
    return res


# ---- one step --------------------------------------------------------------------------


def train_step(loop: Loop, step: int, trackers: StepTrackers | None = None,
               on_grads: Callable[[], None] | None = None) -> None:
    """forward, loss, backward, optimizer step; the trackers' phases marked where given.

    The method's ``on_step`` and the step's series entry are the caller's (``finish_step``):
    the tracked steps run them after their trackers have exited.
    """
    phase = trackers.phase if trackers is not None else _no_phase
    res = loop.result
    record_before(loop, step, ran=True)
    offloading = offload.step_context(loop.cell, loop.applied.model, loop.inputs, trackers)
    with phase("forward"), res.precision.forward(), offloading as offloader:
        loss = workloads.compute_loss(loop.cell, loop.applied.model, loop.inputs)
    if offloader is not None and trackers is not None and trackers.saved is not None:  # the instrumented step
        res.offload = offloader.describe()
    with phase("backward"):
        res.precision.backward(loss)
    del loss
    if on_grads is not None:
        on_grads()
    with phase("optimizer"):
        res.precision.step(loop.optimizer)
        if trackers is not None and trackers.live is not None and trackers.live.alloc_log is not None:
            trackers.live.alloc_log.op_ended()  # zero_grad runs no op: its frees are the gradients' blocks'
        loop.optimizer.zero_grad(set_to_none=True)
        drop_input_grads(loop.inputs)


@contextlib.contextmanager
def _no_phase(name: str):
    yield


def finish_step(loop: Loop, step: int, flops) -> None:
    """The series entry (optimizer state as the step left it, while it is live), then the
    method's per-step hook.

    LaMDA's freezing moves parameters and releases optimizer state here: run it outside
    the live tracker, or the new parameter storages would count as step temporaries.
    """
    record_after(loop, flops.backward if flops is not None else None)
    loop.applied.on_step(step, loop.optimizer)


def drop_input_grads(inputs: dict) -> None:
    """The bare linear workload's input requires grad (it stands for an activation deep in a
    network); its .grad would otherwise persist from step to step, a buffer no real network
    keeps and that the trackers, which start at the instrumented step, cannot see."""
    for t in inputs.values():
        if isinstance(t, torch.Tensor) and t.grad is not None:
            t.grad = None


def fsdp_tracking(c, live):
    """FSDP2's storage resizes (all-gathers freed after use) told to the live tracker, in every
    tracked step of a parallel cell: else each gathered block counts as never freed."""
    return parallel.track_fsdp(live) if parallel.is_parallel(c) else contextlib.nullcontext()


def tracked_step(loop: Loop, step: int) -> None:
    """A step that can hold the run's peak (``peaks.py``): live bytes and FLOPs tracked, no
    timeline, no saved-tensor tracker."""
    applied = loop.applied
    trackers = StepTrackers(applied.model, applied.is_adapter_module, loop.optimizer, saved=False,
                            timeline=False, inputs=loop.inputs)
    log = event_log(loop, step, trackers)
    with CyclicGarbage() as garbage, trackers, fsdp_tracking(loop.cell, trackers.live):
        train_step(loop, step, trackers)
        garbage.collect(trackers.live)
    if log is not None:
        log.close()
    finish_step(loop, step, trackers.flops)
    note_step_peak(loop.result, step, trackers.live.peak)


def instrumented_step(loop: Loop, step: int, timeline: bool) -> None:
    """The step with every tracker on. The module-boundary timeline (about 0.5 s of hooks on a
    full-size model) is kept only when there is an artifacts dir to write it to."""
    c, applied, res = loop.cell, loop.applied, loop.result
    model = applied.model
    adapted = set(applied.adapted)

    def on_timeline(name: str) -> bool:
        return name in adapted

    trackers = StepTrackers(model, applied.is_adapter_module, loop.optimizer, timeline=timeline,
                            timeline_filter=on_timeline, inputs=loop.inputs, keep_tensors=False)
    saved, live, flops = trackers.saved, trackers.live, trackers.flops
    if c.card is not None:  # the allocator model's input (lamda_bench/card/memory.py)
        from ..measure.alloc_log import AllocationLog

        live.alloc_log = res.alloc_log = AllocationLog()
    observer = InputObserver(applied, saved)

    def grads_done() -> None:
        res.grads_bytes = unique_bytes(p.grad for p in model.parameters() if p.grad is not None)

    log = event_log(loop, step, trackers)
    recorder = contextlib.nullcontext()
    if c.card is not None:  # the step's ops for the time model (card/step_time.py)
        from ..measure.ops import OpRecorder

        recorder = res.op_recorder = OpRecorder(trackers.scope)
    with CyclicGarbage() as garbage, observer, trackers, fsdp_tracking(c, live), recorder:
        train_step(loop, step, trackers, on_grads=grads_done)
        res.info["cyclic_garbage_bytes"] = garbage.collect(live)
    if log is not None:
        log.close()
    # Read now: the live tracker's free callbacks outlive it, and on_step replaces parameters.
    res.weights_bytes = live.current["weights"]
    if parallel.is_parallel(c):  # the trainable set this step trained (memory.optimizer's moment)
        res.sharded_prediction = parallel.predicted(applied, c)
    finish_step(loop, step, flops)
    note_step_peak(res, step, live.peak)
    res.saved, res.live, res.flops = saved, live, flops
    res.calls, res.layers = observer.calls, observer.layers
    res.info["optimizer_class"] = type(loop.optimizer).__name__
    res.optimizer_paged = optimizer_bytes(loop.optimizer, paged=True)  # memory.optimizer_paged
    if hasattr(loop.optimizer, "split"):  # Muon: which parameters went to Muon, which to AdamW
        res.info["optimizer_split"] = loop.optimizer.split


def event_log(loop: Loop, step: int, trackers: StepTrackers):
    """The step's live-bytes event log (``events.py``), when the run is a depth probe."""
    res = loop.result
    if res.event_logs is None:
        return None
    from .events import EventLog, find_blocks

    if not res.blocks_prefix:
        found = find_blocks(loop.applied.model, loop.cell.layers)
        if found is None:
            from .extrapolate import NotCertified

            raise NotCertified(f"no single list of {loop.cell.layers} blocks in the model")
        res.blocks_prefix = found[0]
    log = EventLog(loop.applied.model, trackers, loop.optimizer, res.blocks_prefix)
    res.event_logs[step] = log
    if trackers.live.alloc_log is not None:  # a card: tag the allocation log by block (card/render.py)
        from .events import AllocTagger

        trackers.live.alloc_log.tagger = log.alloc_tagger = AllocTagger(log)
    return log


def note_step_peak(res: StepResult, step: int, peak) -> None:
    res.step_peaks[step] = peak
    res.series["peak"][res.series["step"].index(step)] = peak.live_bytes


def extra_peak_steps(loop: Loop, trackable: set[int] | None) -> list[int]:
    """The steps besides the instrumented one that can hold the run's peak and can be tracked."""
    from .peaks import steps_to_track

    c, res = loop.cell, loop.result
    extra, res.untracked_peak_steps = steps_to_track(
        loop.applied.trainable_shrinks, c.warmup + 1 + c.steps, res.instrumented_step, trackable)
    return extra


# ---- series ----------------------------------------------------------------------------


def record_before(loop: Loop, step: int, ran: bool) -> None:
    series = loop.result.series
    series["step"].append(step)
    series["trainable"].append(loop.applied.num_trainable())
    series["peak"].append(None)  # set for the steps run with the live tracker
    series["ran"].append(ran)


def record_after(loop: Loop, backward_flops: int | None) -> None:
    loop.result.series["optimizer"].append(optimizer_bytes(loop.optimizer))
    loop.result.series["backward_flops"].append(backward_flops)


def optimizer_bytes(optimizer: torch.optim.Optimizer, paged: bool = False) -> int:
    """The optimizer state's bytes: device-resident (default), or only the paged buffers
    (bitsandbytes' ``is_paged``: CUDA unified memory, memory.optimizer_paged)."""
    return unique_bytes(v for state in optimizer.state.values() for v in state.values()
                        if isinstance(v, torch.Tensor) and is_paged(v) == paged)


def unique_bytes(tensors) -> int:
    seen: set[int] = set()
    total = 0
    for t in tensors:
        st = parallel.local(t).untyped_storage()
        if id(st) not in seen:
            seen.add(id(st))
            total += st.nbytes()
    return total
