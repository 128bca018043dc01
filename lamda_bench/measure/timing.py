"""Step time: warmup, then timed repetitions with the device synchronized, trackers off."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

from .active import tracker_active


@dataclass
class Timing:
    times_s: list[float]
    median_s: float
    min_s: float
    max_s: float
    spread: float  # (max - min) / median: relative spread of the timed steps

    def to_dict(self) -> dict:
        return asdict(self)


def synchronizer(device) -> Callable[[], None]:
    """A function that waits for the device's queued work (no-op on CPU and fake tensors)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return lambda: torch.cuda.synchronize(dev)
    return lambda: None


def time_steps(step: Callable[[], object], warmup: int, repeats: int, sync: Callable[[], None] | None = None) -> Timing:
    """Run ``step`` ``warmup`` times untimed, then ``repeats`` times timed, each timed call
    bracketed by ``sync()``. Refuses to run while a tracker is active: tracked steps are
    slower and would be reported as the step time."""
    if repeats < 1:
        raise ValueError(f"time_steps needs repeats >= 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"time_steps needs warmup >= 0, got {warmup}")
    if tracker_active.any():
        raise RuntimeError(f"time_steps called while trackers are on: {', '.join(tracker_active.names())}")
    sync = sync or (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return Timing(times, med, min(times), max(times), (max(times) - min(times)) / med if med > 0 else 0.0)
