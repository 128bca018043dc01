"""What a run produces before it becomes a record: ``StepResult``, typed, filled by the step
loop (``step.py``) and read by the record's assembly (``assemble.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..model import precision

if TYPE_CHECKING:
    from ..analytic import AdaptedLinear
    from ..measure import FlopCounter, LiveMemoryTracker, SavedTensorTracker
    from ..measure.live import Peak
    from ..measure.timing import Timing
    from ..methods.base import AppliedMethod

from ..results.record import SERIES_KEYS  # the per-step series, one entry per step (``series.ran``: did it run)


def empty_series() -> dict[str, list]:
    return {k: [] for k in SERIES_KEYS}


@dataclass
class StepResult:
    """What one run (measure or estimate) produced."""

    device: str = "cpu"  # where the steps ran (the fake tensors' device for an estimate)
    applied: "AppliedMethod | None" = None  # the model with the method applied
    saved: "SavedTensorTracker | None" = None  # the instrumented step's trackers
    live: "LiveMemoryTracker | None" = None
    flops: "FlopCounter | None" = None
    calls: "list[AdaptedLinear]" = field(default_factory=list)  # one per adapted call observed
    layers: "list[AdaptedLinear]" = field(default_factory=list)  # one per adapted module
    grads_bytes: int = 0  # gradients held after the instrumented step's backward
    optimizer_paged: int = 0  # paged optimizer state after the instrumented step (memory.optimizer_paged)
    offload: dict | None = None  # offload_activations: the instrumented step's offloader (info.offload_activations)
    weights_bytes: int = 0  # weights after the instrumented step, before on_step moves any
    series: dict[str, list] = field(default_factory=empty_series)
    timing: "Timing | None" = None  # the timed steps (measure only)
    snapshot: str | None = None  # artifacts path of the CUDA memory snapshot, when one was taken
    device_memory: dict[str, int | None] = field(default_factory=dict)  # allocator, NVML, RSS peaks
    info: dict[str, Any] = field(default_factory=dict)  # becomes part of record.info
    horizon: int = 1  # total_steps of the schedule
    instrumented_step: int = 1
    step_peaks: "dict[int, Peak]" = field(default_factory=dict)  # step -> peak, for the steps tracked (peaks.py)
    untracked_peak_steps: list[int] = field(default_factory=list)
    sharded_prediction: dict | None = None  # parallel cells: rank 0's closed forms (parallel.predicted)
    precision: precision.PrecisionRun = field(default_factory=precision.PrecisionRun)  # forward, backward, step
    event_logs: "dict[int, Any] | None" = None  # depth probes only: step -> events.EventLog
    blocks_prefix: str = ""  # depth probes only: the qualified name of the decoder blocks' list
    alloc_log: Any = None  # cells with a card: the instrumented step's allocation log (measure/alloc_log.py)
    op_recorder: Any = None  # cells with a card: the instrumented step's ops (measure/ops.py), for the time model
