"""All step trackers on one shared ModuleScope, with one ``phase`` marker for all.

The cell runner's trackers (``runner/step.py``): one scope means one set of module hooks and
one dispatch mode however many trackers run. Enter inside any FakeTensorMode.
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
    """``saved``, ``flops`` and ``live`` trackers around one training step (any may be off).

    ``inputs`` are the step's inputs (the live tracker counts them apart from activations);
    ``keep_tensors=False`` keeps the saved-tensor tracker's totals without a per-tensor list.
    With both ``saved`` and ``live`` on, the saved-tensor tracker takes autocast's weight
    copies from the live tracker, so they are counted apart from activations.
    """

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
        inputs: object = None,
        keep_tensors: bool = True,
    ) -> None:
        self.scope = ModuleScope(model)
        self.saved = (SavedTensorTracker(model, is_adapter_module, self.scope, keep_tensors=keep_tensors)
                      if saved else None)
        self.live = (
            LiveMemoryTracker(model, optimizer, self.scope, timeline=timeline, timeline_filter=timeline_filter,
                              inputs=inputs)
            if live else None
        )
        if self.saved is not None and self.live is not None:
            self.saved.is_weight_copy = self.live.is_weight_copy
        self.flops = FlopCounter(model, is_adapter_module, self.scope) if flops else None
        self._stack: contextlib.ExitStack | None = None

    def __enter__(self) -> "StepTrackers":
        # Each tracker enters the shared scope itself (re-entrant by reference count).
        self._stack = contextlib.ExitStack()
        for tracker in (self.saved, self.flops, self.live):
            if tracker is not None:
                self._stack.enter_context(tracker)
        return self

    def __exit__(self, *exc) -> None:
        stack, self._stack = self._stack, None
        stack.__exit__(*exc)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Mark a phase ("forward", "backward", "optimizer") for every tracker that is on. The
        saved-tensor tracker needs it too: anything after forward ends its forward."""
        with contextlib.ExitStack() as stack:
            for tracker in (self.live, self.flops, self.saved):
                if tracker is not None:
                    stack.enter_context(tracker.phase(name))
            yield
        if name == "backward":  # after the trackers' phase ends: nothing above reads the hooks after it
            self.scope.release_grad_hooks()

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
