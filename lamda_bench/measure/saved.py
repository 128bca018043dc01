"""Bytes saved for backward, unique storages, attributed to adapter path vs base.

``torch.autograd.graph.saved_tensors_hooks`` sees every tensor autograd keeps for
backward. Storages are counted once (views of one storage, such as q/k/v sharing one
input, are one allocation) and the storages of the model's parameters and buffers are
registered first and excluded: a frozen linear saves a transposed *view of its weight*,
which is no new memory.

Saved is not the same as kept: a graph built in forward whose output is then dropped
(PEFT's DoRA builds ``lora_B(lora_A(eye))`` and uses it detached) frees what it saved
before backward ever runs. Such storages are subtracted again when they die during forward
and reported apart (``discarded_bytes``), so ``total_bytes`` is what forward leaves held
for backward. Forward ends where the caller enters ``phase("backward")`` (or any phase
other than forward); without phase marks, at the first storage released inside backward.

Gradient checkpointing (``torch.utils.checkpoint``, non-reentrant, the transformers
default) saves through its own inner hooks, hiding those tensors from ours. Its forward
still stores each region's inputs through our hook (counted, phase ``forward``). Tensors
saved while a region is recomputed in backward are seen by wrapping the checkpoint's
recomputation hook for the duration of the tracker; they are counted in phase
``backward`` (``recomputed_bytes``), apart from ``total_bytes``, which is what forward
leaves saved for backward.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import torch
import torch.utils.checkpoint as _checkpoint
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

from .active import tracker_active
from .modules import ModuleScope


@dataclass
class SavedTensor:
    """One tensor saved for backward (``new_bytes`` is 0 when its storage was already counted)."""

    shape: tuple[int, ...]
    dtype: str
    module: str | None
    adapter: bool
    phase: str  # "forward" or "backward" (checkpoint recomputation)
    storage_bytes: int
    new_bytes: int
    discarded: bool = False  # its graph was dropped in forward: freed before backward


class SavedTensorTracker:
    """Context manager counting what autograd saves for backward inside it.

    ``is_adapter_module(qualified_name)`` decides attribution; a tensor is attributed to
    the innermost module running when it is first saved (``None``: outside any module).
    """

    def __init__(
        self,
        model: nn.Module,
        is_adapter_module: Callable[[str], bool],
        scope: ModuleScope | None = None,
        keep_tensors: bool = True,
    ) -> None:
        self.model = model
        self.is_adapter_module = is_adapter_module
        self.scope = scope or ModuleScope(model)
        self.keep_tensors = keep_tensors
        self._adapter_cache: dict[str | None, bool] = {None: False}
        self._excluded = WeakIdKeyDictionary()
        self._seen = WeakIdKeyDictionary()
        self.tensors: list[SavedTensor] = []
        self.bytes = {"forward": {"adapter": 0, "base": 0}, "backward": {"adapter": 0, "base": 0}}
        self.by_module: dict[str, int] = {}
        self.forward_by_module: dict[str, int] = {}  # forward's share of by_module (what the step holds)
        self.discarded = {"adapter": 0, "base": 0}
        self._held: dict[int, weakref.ref] = {}  # forward's counted storages, until they die
        self._forward_done = False
        self._open = False
        self._hooks = None
        self._patched = None
        # is_weight_copy(storage): autocast's low-precision cast of a weight (the live tracker
        # knows). Saved for backward, but weight bytes, not activations: counted apart.
        self.is_weight_copy: Callable[[torch.UntypedStorage], bool] | None = None
        self.weight_copy_bytes = 0
        self._weight_copies = WeakIdKeyDictionary()

    # ---- results ------------------------------------------------------------------------
    @property
    def total_bytes(self) -> int:
        """Unique bytes saved for backward by forward (the activations a step holds)."""
        f = self.bytes["forward"]
        return f["adapter"] + f["base"]

    @property
    def adapter_bytes(self) -> int:
        return self.bytes["forward"]["adapter"]

    @property
    def base_bytes(self) -> int:
        return self.bytes["forward"]["base"]

    @property
    def discarded_bytes(self) -> int:
        """Bytes saved in forward by graphs dropped before backward (not in ``total_bytes``)."""
        return self.discarded["adapter"] + self.discarded["base"]

    @property
    def discarded_adapter_bytes(self) -> int:
        return self.discarded["adapter"]

    @property
    def recomputed_bytes(self) -> int:
        """New unique bytes saved during checkpoint recomputation in backward."""
        b = self.bytes["backward"]
        return b["adapter"] + b["base"]

    @property
    def recomputed_adapter_bytes(self) -> int:
        return self.bytes["backward"]["adapter"]

    def released(self, storage: torch.UntypedStorage) -> None:
        """``storage`` leaves the device by design (activation offloading, model/offload.py): its
        death in forward is not a dropped graph, and it stays in ``total_bytes`` (it was saved)."""
        self._held.pop(id(storage), None)

    def has_saved(self, t: "torch.Tensor | torch.UntypedStorage") -> bool:
        """Whether this tensor's storage (or this storage) was already saved for backward,
        i.e. counted once. Parameter and buffer storages are never counted."""
        st = t.untyped_storage() if isinstance(t, torch.Tensor) else t
        return st in self._seen

    def summary(self) -> dict:
        """JSON-able results (per-tensor detail only under ``tensors``)."""
        return {
            "total_bytes": self.total_bytes,
            "adapter_bytes": self.adapter_bytes,
            "base_bytes": self.base_bytes,
            "recomputed_bytes": self.recomputed_bytes,
            "recomputed_adapter_bytes": self.recomputed_adapter_bytes,
            "discarded_bytes": self.discarded_bytes,
            "discarded_adapter_bytes": self.discarded_adapter_bytes,
            "by_module": dict(self.by_module),
            "tensors": [asdict(t) for t in self.tensors],
        }

    # ---- phases / context ---------------------------------------------------------------
    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Mark a phase of the step; any phase other than ``forward`` ends forward."""
        if name != "forward":
            self._forward_done = True
        yield

    def __enter__(self) -> "SavedTensorTracker":
        self._open = True
        for t in list(self.model.parameters()) + list(self.model.buffers()):
            self._excluded[t.untyped_storage()] = True
        self.scope.__enter__()
        self._patch_checkpoint()
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)
        self._hooks.__enter__()
        tracker_active.enter(self)
        return self

    def __exit__(self, *exc) -> None:
        self._open = False
        self._held.clear()
        tracker_active.exit(self)
        self._hooks.__exit__(*exc)
        self._unpatch_checkpoint()
        self.scope.__exit__(*exc)

    # ---- hooks --------------------------------------------------------------------------
    def _pack(self, t: torch.Tensor):
        self._record(t)
        # never hand autograd the output tensor itself (reference cycle through grad_fn)
        return t.detach() if t.requires_grad else t

    def _record(self, t: torch.Tensor) -> None:
        st = t.untyped_storage()
        if st in self._excluded:
            return
        if self.is_weight_copy is not None and self.is_weight_copy(st):
            if st not in self._weight_copies:
                self._weight_copies[st] = True
                self.weight_copy_bytes += st.nbytes()
            return
        module = self.scope.current()
        adapter = self._adapter_cache.get(module)
        if adapter is None:
            adapter = bool(self.is_adapter_module(module))
            self._adapter_cache[module] = adapter
        phase = "backward" if self.scope.in_backward else "forward"
        nbytes = st.nbytes()
        entry = None
        if self.keep_tensors:
            entry = SavedTensor(tuple(t.shape), str(t.dtype).replace("torch.", ""), module, adapter, phase, nbytes, 0)
            self.tensors.append(entry)
        if st not in self._seen:
            self._seen[st] = True
            kind = "adapter" if adapter else "base"
            key = module if module is not None else "<outside>"
            self.bytes[phase][kind] += nbytes
            self.by_module[key] = self.by_module.get(key, 0) + nbytes
            if phase == "forward":
                self.forward_by_module[key] = self.forward_by_module.get(key, 0) + nbytes
            if entry is not None:
                entry.new_bytes = nbytes
            if phase == "forward" and not self._forward_done:
                self._held[id(st)] = weakref.ref(st, self._on_free(id(st), nbytes, kind, key, entry))

    def _on_free(self, storage_id: int, nbytes: int, kind: str, key: str, entry: SavedTensor | None):
        """A counted storage died: during forward its graph was dropped, so it was never kept."""

        def freed(_ref) -> None:
            self._held.pop(storage_id, None)
            if not self._open or self._forward_done:
                return
            if torch._C._current_graph_task_id() != -1:  # backward is releasing what it used
                self._forward_done = True
                return
            self.bytes["forward"][kind] -= nbytes
            self.discarded[kind] += nbytes
            self.by_module[key] -= nbytes
            if self.by_module[key] == 0:
                del self.by_module[key]
            self.forward_by_module[key] -= nbytes
            if self.forward_by_module[key] == 0:
                del self.forward_by_module[key]
            if entry is not None:
                entry.discarded = True

        return freed

    # ---- checkpoint recomputation -------------------------------------------------------
    def _patch_checkpoint(self) -> None:
        original = getattr(_checkpoint, "_recomputation_hook", None)
        if original is None or not isinstance(original, type):
            raise RuntimeError(
                "torch.utils.checkpoint._recomputation_hook not found: this torch cannot count tensors saved in recomputation"
            )
        tracker = self

        class _CountingRecomputationHook(original):  # type: ignore[misc, valid-type]
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                inner_pack = self.pack_hook

                def pack_hook(x):
                    tracker._record(x)
                    return inner_pack(x)

                self.pack_hook = pack_hook

        self._patched = original
        _checkpoint._recomputation_hook = _CountingRecomputationHook

    def _unpatch_checkpoint(self) -> None:
        if self._patched is not None:
            _checkpoint._recomputation_hook = self._patched
            self._patched = None


def _unpack(x):
    return x

