"""Activation offloading (cell key ``offload_activations = true``): in forward, each qualifying
tensor autograd saves for backward is copied to host memory and the device keeps no reference to
it; in backward it is copied back to the device when its node unpacks it, and the host copy is
dropped. The device peak loses those bytes; host memory pays them (``memory.host_offloaded_peak``).

Modelled on TRL's ``OffloadActivations`` (trl/models/activation_offloading.py, which axolotl's
``activation_offloading`` runs; itself torchtune's torchtune/training/_activation_offloading.py
with storage deduplication and parameter filtering), entered around forward and the loss as
axolotl's trainer does. A saved tensor is offloaded unless:

- it is not on the step's device, or holds fewer than ``MIN_OFFLOAD_BYTES`` (numel x element
  size; TRL's and torchtune's ``min_offload_size`` default 1024);
- it is an ``nn.Parameter`` / ``nn.Buffer`` or a view of a parameter's storage (a frozen linear
  saves its weight transposed: TRL keeps it; torchtune, with no storage filter, would copy it);
- the same storage, offset and dtype was already offloaded in this forward (q, k and v's
  adapters saving one input): TRL keeps the later saves on the device, which keeps that storage
  alive there;
- it is saved inside the output head (``lm_head``): TRL's ``NoOpManager`` around it.

Gradient checkpointing: a checkpointed block's own saves go to checkpoint's inner hooks (never
offloaded); the block inputs checkpoint stores are offloaded like any saved tensor; what the
recomputation saves in backward stays on the device.

Not modelled (said in ``info.offload_activations``): the CUDA streams path (TRL's default; axolotl's
``legacy`` is this single-stream one) keeps up to ``max_fwd_stash_size`` = 5 offloaded tensors on
the device until their copies finish and each copied-back tensor until the next node ends: a few
tensors more at a time, not counted here; time overlap is a time question, not bytes. Pinned host
memory (CUDA's host caching allocator rounds blocks up to powers of two and caches them): host bytes
are tensor bytes. TRL keys deduplication on the device address, so a freed block the caching
allocator hands to a later saved tensor of the same dtype is kept on the device; this model keys on
the live storage. Broadcast (stride-0) tensors copy their whole storage, as TRL; other tensors come
back with their shape and values (TRL also restores strides).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

MIN_OFFLOAD_BYTES = 1024
HOST = torch.device("cpu")
MODELLED_ON = ("TRL's OffloadActivations (torchtune's with storage deduplication and parameter filtering), as "
               "axolotl's activation_offloading enters it around forward and the loss; single stream, unpinned")
KEPT_RULES = ("tensors under min_offload_bytes", "parameters, buffers and views of a parameter's storage",
              "a storage+offset+dtype already offloaded in this forward (kept on the device, as TRL)",
              "tensors saved inside the output head (TRL's NoOpManager)", "tensors on another device",
              "what gradient checkpointing saves inside a block and in its recomputation")
NOT_MODELLED = ("the CUDA streams path's stash (up to 5 offloaded tensors on the device until their copies end, "
                "each copied-back tensor until the next node ends); pinned host memory's power-of-two rounding; "
                "TRL's address-keyed deduplication hitting a reused device block")


class _Offloaded:
    """What autograd holds for an offloaded tensor: its host copy, until backward unpacks it."""

    __slots__ = ("host", "device", "shape", "stride", "offset", "broadcast")

    def __init__(self, host, device, shape, stride, offset, broadcast) -> None:
        self.host, self.device, self.shape, self.stride, self.offset, self.broadcast = (
            host, device, shape, stride, offset, broadcast)


def unwrap(model: nn.Module) -> nn.Module:
    """The model TRL looks for an output head on: a PEFT model's ``base_model``, else the model."""
    if hasattr(model, "base_model") and hasattr(model, "peft_config"):
        return model.base_model
    return model


def output_head(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The module TRL's ``get_act_offloading_ctx_manager`` keeps out of offloading, in its order."""
    m = unwrap(model)

    def module(obj, name):
        sub = getattr(obj, name, None)
        return sub if isinstance(sub, nn.Module) else None

    if hasattr(m, "output"):
        out = module(m, "output")
        if out is not None:
            return "output", out
        linear = module(getattr(m, "output"), "linear")
        return ("output.linear", linear) if linear is not None else None
    if hasattr(m, "lm_head"):
        return "lm_head", m.lm_head
    if hasattr(m, "decoder"):
        for name in ("output", "lm_head"):
            sub = module(m.decoder, name)
            if sub is not None:
                return f"decoder.{name}", sub
        return None
    for name in ("final_layer_norm", "ln_f", "head"):
        sub = module(m, name)
        if sub is not None:
            return name, sub
    return None


class Offloader:
    """Saved-tensor hooks over one step's forward; chains to the hooks entered outside it (the
    harness's saved-tensor tracker), which otherwise would no longer run. ``saved`` is told of each
    storage offloaded (its death in forward is not a dropped graph); ``live`` counts the host copies
    apart from the device's bytes."""

    def __init__(self, model: nn.Module, device: torch.device, saved=None, live=None) -> None:
        self.model, self.device, self.saved, self.live = model, torch.device(device), saved, live
        self.scope = getattr(live, "scope", None)  # marks the copies for the time model (measure/ops.py)
        found = output_head(model)
        self.head_name, self.head = found if found is not None else (None, None)
        self.offloaded_tensors = 0
        self.offloaded_bytes = 0
        self.kept = {"small": 0, "parameters": 0, "duplicates": 0, "output_head": 0, "other_device": 0}
        self._in_head = 0
        self._stack: contextlib.ExitStack | None = None

    # ---- context ------------------------------------------------------------------------
    def __enter__(self) -> "Offloader":
        self._params = {id(p.untyped_storage()) for p in self.model.parameters()}
        self._done = WeakIdKeyDictionary()  # device storage -> {(offset, dtype)} offloaded this forward
        top = torch._C._autograd._top_saved_tensors_default_hooks(False)
        self._outer_pack, self._outer_unpack = top if top is not None else (None, None)
        stack = contextlib.ExitStack()
        if self.head is not None:
            pre = self.head.register_forward_pre_hook(self._head_in)
            post = self.head.register_forward_hook(self._head_out, always_call=True)
            stack.callback(pre.remove)
            stack.callback(post.remove)
        stack.enter_context(torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack))
        self._stack = stack
        return self

    def __exit__(self, *exc) -> None:
        stack, self._stack = self._stack, None
        stack.__exit__(*exc)
        self._done = WeakIdKeyDictionary()

    def _head_in(self, *_args) -> None:
        self._in_head += 1

    def _head_out(self, *_args) -> None:
        self._in_head -= 1

    # ---- hooks --------------------------------------------------------------------------
    def _pack(self, t: torch.Tensor) -> Any:
        if self._outer_pack is not None:
            packed = self._outer_pack(t)
        else:  # never hand autograd the output tensor itself (a reference cycle through grad_fn)
            packed = t.detach() if t.requires_grad else t
        if not isinstance(packed, torch.Tensor):
            return packed
        why = self._kept(t)
        if why is not None:
            self.kept[why] += 1
            return packed
        return self._offload(t, packed)

    def _kept(self, t: torch.Tensor) -> str | None:
        if self._in_head:  # TRL's NoOpManager: its own hooks are not even called there
            return "output_head"
        st = t.untyped_storage()
        if (t.storage_offset(), t.dtype) in self._done.get(st, ()):
            return "duplicates"
        if t.device.type != self.device.type:
            return "other_device"
        if t.element_size() * t.nelement() < MIN_OFFLOAD_BYTES:
            return "small"
        if isinstance(t, nn.Parameter) or (hasattr(nn, "Buffer") and isinstance(t, nn.Buffer)) \
                or id(st) in self._params:
            return "parameters"
        return None

    def _offload(self, t: torch.Tensor, packed: torch.Tensor) -> _Offloaded:
        st = t.untyped_storage()
        stride = tuple(packed.stride())
        broadcast = 0 in stride
        host_ctx = self.live.host_allocations() if self.live is not None else contextlib.nullcontext()
        with torch.no_grad():
            with host_ctx:
                if broadcast:  # the storage itself, not the broadcast materialised (TRL)
                    n = st.nbytes() // packed.element_size()
                    host = torch.empty(n, dtype=packed.dtype, device=HOST)
                    src = torch.as_strided(packed, (n,), (1,), 0)
                else:
                    host = torch.empty_like(packed, device=HOST)
                    src = packed
            with self._link():
                host.copy_(src)
        self._done.setdefault(st, set()).add((t.storage_offset(), t.dtype))
        if self.saved is not None:
            self.saved.released(st)
        self.offloaded_tensors += 1
        self.offloaded_bytes += host.untyped_storage().nbytes()
        return _Offloaded(host, packed.device, tuple(packed.shape), stride, packed.storage_offset(), broadcast)

    def _unpack(self, x: Any) -> Any:
        if isinstance(x, _Offloaded):
            x = self._restore(x)
        return self._outer_unpack(x) if self._outer_unpack is not None else x

    @contextlib.contextmanager
    def _link(self):
        if self.scope is None:
            yield
            return
        self.scope.host_link = True
        try:
            yield
        finally:
            self.scope.host_link = False

    def _restore(self, x: _Offloaded) -> torch.Tensor:
        host, x.host = x.host, None  # the host copy goes when backward takes it back (TRL drops it here)
        if host is None:
            raise RuntimeError("an offloaded saved tensor was unpacked twice (TRL refuses this too)")
        with torch.no_grad():
            dev = torch.empty_like(host, device=x.device)
            with self._link():
                dev.copy_(host)
        if x.broadcast:
            dev = torch.as_strided(dev, x.shape, x.stride, x.offset)
        return dev

    # ---- record -------------------------------------------------------------------------
    def describe(self) -> dict:
        """``info.offload_activations``: what was modelled and what this step's forward offloaded."""
        return {"modelled_on": MODELLED_ON, "min_offload_bytes": MIN_OFFLOAD_BYTES,
                "output_head_kept": self.head_name, "offloaded_tensors": self.offloaded_tensors,
                "offloaded_bytes": self.offloaded_bytes, "kept_on_device": dict(self.kept),
                "host_link_bytes_per_step": 2 * self.offloaded_bytes,
                "kept_rules": list(KEPT_RULES), "not_modelled": NOT_MODELLED}


def step_context(cell, model: nn.Module, inputs: dict, trackers=None):
    """The forward's offloading context for a cell that asks for it, else a null context."""
    if not getattr(cell, "offload_activations", False):
        return contextlib.nullcontext()
    device = next((t.device for t in inputs.values() if isinstance(t, torch.Tensor)), HOST)
    saved = trackers.saved if trackers is not None else None
    live = trackers.live if trackers is not None else None
    return Offloader(model, device, saved, live)
