"""Closed form for the weight bytes of a quantized base (lamda_bench/model/quant.py): a hand count.

Per quantized linear with n = d_in x d_out weights (bitsandbytes 0.50, the layouts
``quantize_4bit`` / ``int8_vectorwise_quant`` produce):

- nf4 / fp4: the packed weight, two 4-bit values per uint8 (ceil(n / 2) B); one fp32 absmax per
  block of 64 values (4 ceil(n / 64) B); the format's 16-entry fp32 code map (64 B, one per linear:
  ``get_4bit_type`` builds it per call).
- nf4-dq / fp4-dq (double quantization): the packed weight as above; the block absmax as uint8
  (ceil(n / 64) B); its own fp32 absmax per block of 256 absmax values (4 ceil(ceil(n / 64) / 256) B);
  the fp32 offset subtracted before that quantization (4 B); the 64 B code map; and the 256-entry
  fp32 dynamic code map of the absmax quantization (1 KiB: ``quantize_blockwise`` stores a copy
  of bitsandbytes' cached map in every linear's state).
- int8: the int8 weight (n B) and one fp32 absmax per output row (4 d_out B).

Everything else (embeddings, norms, ``lm_head``, biases, adapters, buffers) keeps
``analytic.state_bytes``'s count; ``adjust`` takes the quantized linears out of that count and
puts this one in. The structure (which linears are quantized, their shapes) is read from the
model; the bytes are counted here, never read from storages.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..model.quant import BLOCKSIZE, FORMATS, MARKER, NESTED_BLOCKSIZE, QuantFormat

CODE_4BIT_BYTES = 16 * 4  # nf4 / fp4 code map: 16 fp32 values
DYNAMIC_MAP_BYTES = 256 * 4  # the double-quant absmax code map: 256 fp32 values, one copy per linear
FP32 = 4


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def stored_elements(fmt: QuantFormat, d_in: int, d_out: int) -> int:
    """Elements of the weight parameter as stored (what ``params.total`` counts for it)."""
    n = d_in * d_out
    return _ceil(n, 2) if fmt.bits == 4 else n


def linear_bytes(fmt: QuantFormat, d_in: int, d_out: int) -> dict[str, int]:
    """Bytes of one quantized linear's weight, by part (module docstring)."""
    n = d_in * d_out
    if fmt.bits == 8:
        return {"packed": n, "absmax": FP32 * d_out}
    blocks = _ceil(n, BLOCKSIZE)
    parts = {"packed": _ceil(n, 2), "code": CODE_4BIT_BYTES}
    if fmt.double_quant:
        parts.update(absmax=blocks, nested_absmax=FP32 * _ceil(blocks, NESTED_BLOCKSIZE), offset=FP32,
                     nested_code=DYNAMIC_MAP_BYTES)
    else:
        parts["absmax"] = FP32 * blocks
    return parts


@dataclass(frozen=True)
class QuantizedBase:
    """The quantized linears of a model: what ``adjust`` swaps in for their unquantized count."""

    fmt: QuantFormat
    shapes: tuple[tuple[int, int], ...]  # (d_in, d_out) per quantized linear
    state_storages: frozenset[int]  # ids of the quant-state buffer storages (not plain buffers)

    @property
    def stored_elements(self) -> int:
        return sum(stored_elements(self.fmt, d_in, d_out) for d_in, d_out in self.shapes)

    @property
    def weight_bytes(self) -> int:
        return sum(sum(linear_bytes(self.fmt, d_in, d_out).values()) for d_in, d_out in self.shapes)


def quantized_base(model: nn.Module) -> QuantizedBase | None:
    """The quantized linears of ``model`` (None when its base is not quantized)."""
    linears = [m for m in model.modules() if getattr(m, MARKER, None)]
    if not linears:
        return None
    fmt = FORMATS[getattr(linears[0], MARKER)]
    storages = {id(b.untyped_storage()) for m in linears for k, b in m._buffers.items()
                if k.startswith("quant_") and b is not None}
    return QuantizedBase(fmt, tuple((int(m.in_features), int(m.out_features)) for m in linears),
                         frozenset(storages))
