"""Live bytes by category and phase, with a per-module timeline, on any kind of tensor.

The shared dispatch mode (``ModuleScope.ops``) shows us every op output; each output storage is registered once,
with its size and a category, and a weakref callback subtracts it when the storage dies.
That works the same on CPU, CUDA and fake tensors, because it reads only storage sizes
(the same design as ``torch.distributed._tools.mem_tracker``, which refuses frozen
parameters and so cannot serve PEFT models).

Categories:
- ``weights``: parameter and buffer storages (registered first, at enter; of which
  ``trainable_weights`` those of parameters that require grad),
- ``grads``: ``param.grad`` storages (moved there by post-accumulate-grad hooks, so
  they count as grads from the moment backward writes them),
- ``optimizer``: tensors in ``optimizer.state`` (at enter and at the end of each
  ``optimizer`` phase),
- ``activations``: storages created during the ``forward`` phase, and the step's input
  batch (``inputs=``: created before the tracker, but live through the step, and counted by
  the CUDA allocator; leaving it out put a bare-linear estimate 7% under the measured peak),
- ``temporaries``: everything else created while tracking, including autocast's
  low-precision copies of weights (an ``_to_copy`` of a weight storage while autocast is
  on): they are neither weights nor activations. They are also counted apart
  (``weight_copies``, ``weight_copies_peak``, ``weight_copies_at_peak``) and
  ``is_weight_copy`` lets the saved-tensor tracker tell them from activations.
- sharded (FSDP2) steps only, told by ``parallel.track_fsdp`` through ``set_storage``:
  ``unsharded_weights`` (a block's gathered parameters, whose storages FSDP2 resizes in
  place) and ``comm_buffers`` (flat all-gather / reduce-scatter buffers). Parameters that
  are DTensors count by their local shard.
Tensors created before the tracker entered count only if they are one of the above.

When a storage changes category after a peak was recorded (a grad written just before
the backward peak; optimizer state created lazily in the first step), the peak's
breakdown is corrected if the storage already existed at that peak: live storages do not
come back to life, so "created before the peak and alive now" means "alive at the peak".
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from ..model.precision import autocast_enabled
from ..results.record import CATEGORIES  # the categories of memory.at_peak, defined once
from ..optimizers.build import is_paged  # the tag optimizers/build.py puts on paged state
from .active import tracker_active
from .alloc_log import AllocationLog
from .modules import ModuleScope

_TO_COPY = torch.ops.aten._to_copy.default
# Paged optimizer state (bitsandbytes' CUDA unified memory, tagged ``is_paged``): its own category,
# outside live_bytes (the caching allocator never holds it); memory.optimizer_paged reports it.
# A peak taken while such a buffer was first created (an optimizer's first step) still counts it,
# as a temporary: the estimate primes that step untracked, so only a tracked first step sees it.
PAGED = "optimizer_paged"
# Host copies of offloaded saved tensors (model/offload.py): born inside ``host_allocations()``, counted
# in ``host_bytes`` / ``host_peak`` only, never in ``current`` or live_bytes, never in the allocation log.
HOST = "host_offloaded"



@dataclass
class _Storage:
    nbytes: int
    category: str
    created_at: int
    ref: weakref.ref | None = None
    weight_copy: bool = False  # autocast's cast of a weight
    serial: int = -1  # its number in the allocation log, when one is attached


@dataclass
class Peak:
    """Live bytes at the highest point of a phase, with the breakdown at that moment."""

    live_bytes: int
    by_category: dict[str, int]
    at: int  # op counter when reached

    def to_dict(self) -> dict:
        return {"live_bytes": self.live_bytes, "by_category": dict(self.by_category)}


class LiveMemoryTracker:
    """Context manager: enter it inside any ``FakeTensorMode`` (below it, our dispatch
    mode would never see the fake ops). Mark phases with ``with tracker.phase("forward"): ...``
    (names are free; ``forward``, ``backward``, ``optimizer`` have meaning above).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scope: ModuleScope | None = None,
        timeline: bool = True,
        timeline_filter: Callable[[str], bool] | None = None,
        inputs: object = None,
    ) -> None:
        self.model = model
        self.inputs = inputs
        self.optimizer = optimizer
        self.scope = scope or ModuleScope(model)
        self.timeline_enabled = timeline
        self.timeline_filter = timeline_filter
        self.timeline: list[dict] = []
        self.current = dict.fromkeys(CATEGORIES, 0)
        self.live_bytes = 0
        self.trainable_weights = 0
        self.peak: Peak = Peak(0, dict(self.current), 0)
        self.phase_peaks: dict[str, Peak] = {}
        self._storages: dict[int, _Storage] = {}
        self.device_storages = 0  # storages counted in live_bytes (paged ones are not): runner/events.py
        self._phase: str | None = None
        self._ops = 0
        self._grad_hooks: list = []
        self.weight_copies = 0  # autocast weight copies live now (bytes)
        self.weight_copies_peak = 0  # the most of them live at once
        self.weight_copies_at_peak = 0  # live at the step's overall peak
        # Optional observers (depth extrapolation's event log, runner/events.py): called on every
        # change that can set a peak, and before a storage changes category.
        self.on_change: Callable[[], None] | None = None
        self.on_reclassify: Callable[[_Storage, str], None] | None = None
        # Optional: every device storage's birth and death in order (alloc_log.py), for the
        # allocator model of lamda_bench/card; attach before entering.
        self.alloc_log: AllocationLog | None = None
        self._entering = False
        self.host_bytes = 0  # offloaded saved tensors' host copies live now (memory.host_offloaded_peak)
        self.host_peak = 0
        self._host = False

    # ---- results ------------------------------------------------------------------------
    def summary(self) -> dict:
        """JSON-able: current bytes by category, overall and per-phase peaks."""
        return {
            "current": dict(self.current),
            "live_bytes": self.live_bytes,
            "trainable_weights": self.trainable_weights,
            "peak": self.peak.to_dict(),
            "phase_peaks": {k: p.to_dict() for k, p in self.phase_peaks.items()},
        }

    # ---- phases -------------------------------------------------------------------------
    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self._phase is not None:
            raise RuntimeError(f"phase {name!r} started inside phase {self._phase!r}; phases do not nest")
        self._phase = name
        if self.alloc_log is not None:
            self.alloc_log.phase(name)
        self.phase_peaks.setdefault(name, Peak(self.live_bytes, dict(self.current), self._ops))
        self._note_peak()
        self._event(name, None, "start")
        try:
            yield
        finally:
            if name == "backward":
                self._register_grads()
            if name == "optimizer":
                self._register_optimizer_state()
            self._event(name, None, "end")
            self._phase = None

    # ---- context ------------------------------------------------------------------------
    def __enter__(self) -> "LiveMemoryTracker":
        self._entering = True
        params = list(self.model.parameters())
        for t in params + list(self.model.buffers()):
            self._register(t, "weights")
        for t in tree_flatten(self.inputs)[0]:
            if isinstance(t, torch.Tensor):
                self._register(t, "activations")
        local = [getattr(p, "_local_tensor", p) for p in params if p.requires_grad]
        trainable = {id(t.untyped_storage()): t.untyped_storage().nbytes() for t in local}
        self.trainable_weights = sum(trainable.values())
        self._register_grads()
        self._register_optimizer_state()
        self._entering = False
        for p in params:
            if p.requires_grad:
                self._grad_hooks.append(p.register_post_accumulate_grad_hook(self._on_grad))
        self.scope.__enter__()
        if self.timeline_enabled:
            self.scope.add_listener(self._on_boundary, self.timeline_filter)
        self.scope.ops.add(self._observe)
        self.scope.ops.__enter__()
        tracker_active.enter(self)
        return self

    def __exit__(self, *exc) -> None:
        if self.alloc_log is not None:
            self.alloc_log.close()
        tracker_active.exit(self)
        self.scope.ops.__exit__(*exc)
        self.scope.ops.remove(self._observe)
        self.scope.remove_listener(self._on_boundary)
        self.scope.__exit__(*exc)
        for h in self._grad_hooks:
            h.remove()
        self._grad_hooks = []

    @contextlib.contextmanager
    def host_allocations(self) -> Iterator[None]:
        """Storages born inside are host memory (offloaded saved tensors): outside the device's bytes."""
        self._host = True
        try:
            yield
        finally:
            self._host = False

    def is_weight_copy(self, storage: torch.UntypedStorage) -> bool:
        rec = self._storages.get(id(storage))
        return rec is not None and rec.weight_copy

    def _casts_weight(self, func, args, kwargs) -> bool:
        """An autocast cast of a weight: a dtype-changing ``_to_copy`` of a weight storage inside a
        precision policy's autocast region (``precision.autocast_enabled``)."""
        if func is not _TO_COPY or not args or not isinstance(args[0], torch.Tensor) or not autocast_enabled():
            return False
        rec = self._storages.get(id(args[0].untyped_storage()))
        return rec is not None and rec.category == "weights" and kwargs.get("dtype", args[0].dtype) != args[0].dtype

    def _observe(self, func, args, kwargs, out) -> None:
        self._ops += 1
        category = "activations" if self._phase == "forward" else "temporaries"
        if self._host:
            category = HOST
        if isinstance(out, torch.Tensor) and self._casts_weight(func, args, kwargs or {}):
            self._register(out, "temporaries", weight_copy=True)
        elif isinstance(out, torch.Tensor):
            self._register(out, category)
        elif isinstance(out, (tuple, list)):
            for t in out:
                if isinstance(t, torch.Tensor):
                    self._register(t, category)
                elif isinstance(t, (tuple, list)):  # e.g. _foreach ops inside a tuple
                    for u in tree_flatten(t)[0]:
                        if isinstance(u, torch.Tensor):
                            self._register(u, category)

    # ---- bookkeeping --------------------------------------------------------------------
    def set_storage(self, t: torch.Tensor, category: str) -> None:
        """(Re)count ``t``'s storage at its current size under ``category``: for storages resized
        in place (FSDP2's unsharded parameters), which no op output reveals."""
        st = t.untyped_storage()
        rec = self._storages.get(id(st))
        if rec is None:
            self.current.setdefault(category, 0)
            self._register(t, category)
            return
        nbytes = st.nbytes()
        if self.alloc_log is not None and rec.category != PAGED:  # a resize frees and allocates
            self.alloc_log.died(rec.serial)
            rec.serial = self.alloc_log.born(nbytes, category)
        self.current[rec.category] -= rec.nbytes
        self.live_bytes += nbytes - rec.nbytes
        self.current[category] = self.current.get(category, 0) + nbytes
        rec.nbytes, rec.category = nbytes, category
        self._note_peak()

    def _register(self, t: torch.Tensor, category: str, weight_copy: bool = False) -> None:
        t = getattr(t, "_local_tensor", t)  # a DTensor (FSDP2 parameter): rank 0's shard
        st = t.untyped_storage()
        key = id(st)
        rec = self._storages.get(key)
        if rec is not None:
            if category in ("weights", "grads", "optimizer", PAGED) and rec.category != category:
                self._reclassify(rec, category)
            return
        nbytes = st.nbytes()
        rec = _Storage(nbytes, category, self._ops, weight_copy=weight_copy)
        rec.ref = weakref.ref(st, self._freer(key))
        self._storages[key] = rec
        if category == HOST:  # host memory: its own count, no device event
            self.host_bytes += nbytes
            self.host_peak = max(self.host_peak, self.host_bytes)
            return
        self.current[category] = self.current.get(category, 0) + nbytes
        if category == PAGED:  # outside the device allocator: never in live_bytes
            return
        if self.alloc_log is not None:
            rec.serial = self.alloc_log.born(nbytes, category, existing=self._entering, tensor=t)
        self.device_storages += 1
        self.live_bytes += nbytes
        if weight_copy:
            self.weight_copies += nbytes
            self.weight_copies_peak = max(self.weight_copies_peak, self.weight_copies)
        self._note_peak()

    def _freer(self, key: int):
        def free(_ref) -> None:
            rec = self._storages.pop(key, None)
            if rec is not None and rec.category == HOST:
                self.host_bytes -= rec.nbytes
            elif rec is not None:
                self.current[rec.category] -= rec.nbytes
                if rec.category != PAGED:
                    self.live_bytes -= rec.nbytes
                    self.device_storages -= 1
                    if self.alloc_log is not None and rec.serial >= 0:
                        self.alloc_log.died(rec.serial)
                if rec.weight_copy:
                    self.weight_copies -= rec.nbytes

        return free

    def _reclassify(self, rec: _Storage, category: str) -> None:
        if self.on_reclassify is not None:
            self.on_reclassify(rec, category)
        for snap in [self.peak, *self.phase_peaks.values()]:
            if rec.created_at <= snap.at and rec.category in snap.by_category:
                snap.by_category[rec.category] -= rec.nbytes
                snap.by_category[category] = snap.by_category.get(category, 0) + rec.nbytes
        self.current[rec.category] -= rec.nbytes
        self.current[category] = self.current.get(category, 0) + rec.nbytes
        if category == PAGED and rec.category != PAGED:  # leaves the device count from now on
            self.live_bytes -= rec.nbytes
            self.device_storages -= 1
            if self.alloc_log is not None and rec.serial >= 0:
                self.alloc_log.died(rec.serial)
                rec.serial = -1
        rec.category = category

    def _note_peak(self) -> None:
        if self.on_change is not None:
            self.on_change()
        live = self.live_bytes
        if live > self.peak.live_bytes:
            self.peak = Peak(live, dict(self.current), self._ops)
            self.weight_copies_at_peak = self.weight_copies
        if self._phase is not None:
            p = self.phase_peaks[self._phase]
            if live > p.live_bytes:
                self.phase_peaks[self._phase] = Peak(live, dict(self.current), self._ops)

    def _on_grad(self, param: torch.Tensor) -> None:
        if param.grad is not None:
            self._register(param.grad, "grads")

    def _register_grads(self) -> None:
        for p in self.model.parameters():
            if p.grad is not None:
                self._register(p.grad, "grads")

    def _register_optimizer_state(self) -> None:
        if self.optimizer is None:
            return
        for state in self.optimizer.state.values():
            for v in state.values():
                if isinstance(v, torch.Tensor):
                    self._register(v, PAGED if is_paged(v) else "optimizer")

    # ---- timeline -----------------------------------------------------------------------
    def _on_boundary(self, phase: str, module: str, event: str) -> None:
        self._event(self._phase or phase, module, event)

    def _event(self, phase: str, module: str | None, event: str) -> None:
        if self.timeline_enabled:
            self.timeline.append(
                {"phase": phase, "module": module, "event": event,
                 "live_bytes": self.live_bytes, "by_category": dict(self.current)}
            )
