"""Trackers, one concern each, usable on CPU, CUDA and fake tensors (see each module)."""

from .bundle import StepTrackers
from .flops import ATTENTION_COUNTING, FlopCounter
from .live import CATEGORIES, LiveMemoryTracker
from .modules import ModuleScope
from .saved import SavedTensorTracker
from .timing import Timing, synchronizer, time_steps

__all__ = [
    "ATTENTION_COUNTING",
    "CATEGORIES",
    "FlopCounter",
    "LiveMemoryTracker",
    "ModuleScope",
    "SavedTensorTracker",
    "StepTrackers",
    "Timing",
    "synchronizer",
    "time_steps",
]
