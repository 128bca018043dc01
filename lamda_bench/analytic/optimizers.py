"""Closed forms of every catalogue optimizer's state bytes after its first step, per trainable
tensor, from the tensor's shape and itemsize alone (``optimizers/catalogue.py`` names them).

Rules (n: a tensor's elements, s: its itemsize; each read from the libraries' ``init_state``):
- torch AdamW (``adamw``, ``adamw_torch``, ``adamw_torch_fused``): exp_avg and exp_avg_sq in
  the parameter's dtype, 2 n s, plus a 4-byte fp32 ``step`` scalar per tensor.
- ``sgd`` (the Trainer's: no momentum): nothing.
- bitsandbytes AdamW / Lion, 32-bit: fp32 moments whatever the parameter's dtype, 4 n per
  moment (AdamW 2, Lion 1); ``step`` is a Python int (no bytes).
- bitsandbytes 8-bit: a tensor under ``min_8bit_size`` (4096 elements) keeps the 32-bit state
  above; a larger one keeps 1 byte per element per moment plus a fp32 absmax per block of 256
  per moment. The 256-entry fp32 quantile map per moment (``dynamic``, and AdamW's
  ``udynamic``) is one tensor shared by every parameter: 1024 bytes each, once.
- paged (``paged_*``): on a GPU every moment buffer (state1, state2) of a tensor with at
  least 1e5 elements lives in CUDA unified memory: counted in ``optimizer_paged``, not in
  ``optimizer``; absmax and the maps stay ordinary device memory.
- ``adafactor`` (transformers', beta1 None: no first moment): a tensor with 2 or more
  dimensions keeps a row vector (shape[:-1]) and a column vector (shape[:-2] + shape[-1:]) of
  the second moment, any other its full second moment, in fp32 for a 16-bit parameter (its
  gradient is upcast first) and in the parameter's dtype otherwise, plus a 0-d ``RMS`` tensor
  of that dtype; ``step`` is a Python int.
- ``muon``: torch Muon keeps one momentum buffer (n s) for each 2-D tensor that is not an
  input or output embedding; the rest go to torch AdamW (the first rule).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

MIN_8BIT_SIZE = 4096  # bitsandbytes Optimizer2State / Optimizer1State default
BLOCKSIZE = 256  # bitsandbytes' blockwise state quantization
QMAP_BYTES = 256 * 4  # one fp32 quantile map
PAGED_MIN_NUMEL = 100_000  # bitsandbytes get_state_buffer: smaller tensors never paged


@dataclass(frozen=True)
class Tensor:
    """One trainable tensor as the closed form needs it."""

    shape: tuple[int, ...]
    itemsize: int
    embedding: bool = False  # an input or output embedding (Muon's recipe gives it to AdamW)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def adamw(t: Tensor) -> int:
    return 2 * t.numel * t.itemsize + 4


def bnb(t: Tensor, moments: int, bits: int) -> tuple[int, int]:
    """(moment buffers, absmax) bytes of one tensor under bitsandbytes."""
    n = t.numel
    if bits == 32 or n < MIN_8BIT_SIZE:
        return moments * 4 * n, 0
    return moments * n, moments * 4 * math.ceil(n / BLOCKSIZE)


def adafactor(t: Tensor) -> int:
    s = 4 if t.itemsize == 2 else t.itemsize  # a 16-bit gradient is upcast to fp32 first
    if len(t.shape) >= 2:
        rows = math.prod(t.shape[:-1])
        cols = math.prod(t.shape[:-2]) * t.shape[-1]
        return (rows + cols) * s + s  # + the 0-d RMS tensor
    return t.numel * s + s


def state_bytes(name: str, tensors: Iterable[Tensor], paged_target: bool = False) -> dict:
    """{"optimizer": bytes, "optimizer_paged": bytes} after the first step of optimizer ``name``."""
    from ..optimizers.catalogue import entry

    e = entry(name)
    resident = paged = 0
    any_8bit = False
    for t in tensors:
        if e.kind == "adamw":
            resident += adamw(t)
        elif e.kind == "sgd":
            pass
        elif e.kind in ("bnb-adamw", "bnb-lion"):
            moments = 2 if e.kind == "bnb-adamw" else 1
            buffers, absmax = bnb(t, moments, e.bits)
            any_8bit = any_8bit or (e.bits == 8 and t.numel >= MIN_8BIT_SIZE)
            if e.paged and paged_target and t.numel >= PAGED_MIN_NUMEL:
                paged += buffers
            else:
                resident += buffers
            resident += absmax
        elif e.kind == "adafactor":
            resident += adafactor(t)
        elif e.kind == "muon":
            resident += t.numel * t.itemsize if len(t.shape) == 2 and not t.embedding else adamw(t)
        else:  # pragma: no cover - every catalogue kind is above
            raise ValueError(f"no closed form for optimizer kind {e.kind!r}")
    if any_8bit:
        resident += QMAP_BYTES * (2 if e.kind == "bnb-adamw" else 1)
    return {"optimizer": resident, "optimizer_paged": paged}


def per_param(name: str, shape: tuple[int, ...], itemsize: int, paged_target: bool = False) -> float:
    """Bytes per element of one tensor (maps left out): what a table of B/param quotes."""
    t = Tensor(shape, itemsize)
    out = state_bytes(name, [t], paged_target)
    n_maps = 0
    if entry_bits_8(name) and t.numel >= MIN_8BIT_SIZE:
        n_maps = 2 if "adamw" in name else 1
    return (out["optimizer"] + out["optimizer_paged"] - QMAP_BYTES * n_maps) / t.numel


def entry_bits_8(name: str) -> bool:
    from ..optimizers.catalogue import entry

    e = entry(name)
    return e.kind.startswith("bnb") and e.bits == 8
