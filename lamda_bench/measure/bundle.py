"""All step trackers on one shared ModuleScope, with one ``phase`` marker for all.

Convenience for the cell runner: one scope means one set of module hooks and one
dispatch mode however many trackers run. Enter inside any FakeTensorMode.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn

from .flops import FlopCounter
from .live import LiveMemoryTracker
from .modules import ModuleScope
from .saved import SavedTensorTracker


class StepTrackers:
    """``saved``, ``flops`` and ``live`` trackers around one training step (any may be off)."""

    def __init__(
        self,
        model: nn.Module,
        is_adapter_module: Callable[[str], bool],
        optimizer: torch.optim.Optimizer | None = None,
        saved: bool = True,
        flops: bool = True,
        live: bool = True,
        timeline: bool = True,
        timeline_filter: Callable[[str], bool] | None = None,
    ) -> None:
        self.scope = ModuleScope(model)
        self.saved = SavedTensorTracker(model, is_adapter_module, self.scope) if saved else None
        self.flops = FlopCounter(model, is_adapter_module, self.scope) if flops else None
        self.live = (
            LiveMemoryTracker(model, optimizer, self.scope, timeline=timeline, timeline_filter=timeline_filter)
            if live else None
        )
        self._stack: contextlib.ExitStack | None = None

    def __enter__(self) -> "StepTrackers":
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(self.scope)
        for tracker in (self.saved, self.flops, self.live):
            if tracker is not None:
                self._stack.enter_context(tracker)
        return self

    def __exit__(self, *exc) -> None:
        stack, self._stack = self._stack, None
        stack.__exit__(*exc)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Mark a phase ("forward", "backward", "optimizer") for the trackers that use phases."""
        with contextlib.ExitStack() as stack:
            for tracker in (self.flops, self.live):
                if tracker is not None:
                    stack.enter_context(tracker.phase(name))
            yield

    def summary(self) -> dict:
        """JSON-able results of the trackers that ran (no per-tensor detail, no timeline)."""
        out: dict = {}
        if self.saved is not None:
            out["saved"] = {k: v for k, v in self.saved.summary().items() if k != "tensors"}
        if self.flops is not None:
            out["flops"] = self.flops.summary()
        if self.live is not None:
            out["live"] = self.live.summary()
        return out
