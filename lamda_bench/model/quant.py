"""Quantized frozen base (QLoRA-style): the cell's ``quant`` key.

``quant = "nf4" | "fp4"`` stores every linear the way ``from_pretrained(...,
quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=...))`` does:
transformers' own ``replace_with_bnb_linear`` swaps each ``nn.Linear`` for a bitsandbytes
``Linear4bit``, skipping the modules transformers skips (``get_keys_to_not_convert``: the output
embedding ``lm_head`` and tied weights, plus the model's ``_keep_in_fp32_modules``), which stay in
the model dtype. The weights are then quantized with bitsandbytes' ``quantize_4bit`` (blocksize
64, what transformers uses), computing in the model dtype (``bnb_4bit_compute_dtype``).
``"nf4-dq" | "fp4-dq"`` add double quantization (``bnb_4bit_use_double_quant=True``: the fp32
absmax of every 64-value block is itself quantized to uint8 in blocks of 256). ``"int8"`` is
``load_in_8bit`` (``Linear8bitLt``, LLM.int8() row-wise absmax, no fp16 weights kept).
One key, not a separate double-quant flag: double quantization exists for the 4-bit formats
only, so a separate key would admit a combination (int8 + double quant) that cannot be built.

It runs BEFORE the method is applied, so LoRA / PiSSA / LaMDA wrap quantized layers, as PEFT
does for QLoRA (PEFT dispatches its ``lora.bnb.Linear4bit`` / ``Linear8bitLt`` wrappers; the
model carries ``is_loaded_in_4bit`` / ``is_loaded_in_8bit`` as transformers' quantizer sets them).
The quantized weights are built without hub weights: from the model's own (random) weights on a
real device, and on the meta device through bitsandbytes' fake kernels (estimate mode). Every
quant-state tensor (absmax, code maps, offset, int8 row scales) is registered on its module as
a non-persistent buffer: the live tracker then counts it as weights, and ``fake.to_fake`` turns
it into a fake tensor in place (the QuantState keeps pointing at it).

PiSSA and LaMDA on a quantized base (QPiSSA's way, ``float_base_for_init``): their init needs
the SVD of the weight, which a packed 4-bit weight cannot give. Each target's weight is
dequantized (to the compute dtype), the method's init runs on it (SVD, residual W - principal
part written into the base), and the residual is re-quantized in the same format. The base a
run trains on is thus the quantized residual, as in QPiSSA (PiSSA's paper, Sec. 4.4), which
quantizes the residual rather than W. Methods say they need this with ``init_reads_base``.

Where a combination cannot run (bitsandbytes missing, a model with no transformers class, a
quantized format on a device bitsandbytes has no kernel for), ``QuantError`` says what it needs
in one line; never a silent fallback to an unquantized base.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from .workloads import WorkloadError

MARKER = "lamda_bench_quant"  # attribute set on every linear this module quantized: its format name
BLOCKSIZE = 64  # transformers' bnb_4bit blocksize
NESTED_BLOCKSIZE = 256  # bitsandbytes' blocksize for the double-quantized absmax
_STATE_BUFFERS = ("quant_absmax", "quant_code", "quant_offset", "quant_nested_absmax", "quant_nested_code",
                  "quant_scb")


class QuantError(WorkloadError):
    """A quantized base that cannot be built or run as asked (one line)."""


@dataclass(frozen=True)
class QuantFormat:
    name: str
    bits: int  # 4 or 8
    quant_type: str | None  # "nf4" / "fp4" for 4-bit
    double_quant: bool
    description: str

    def to_info(self) -> dict:
        return {"format": self.name, "bits": self.bits, "quant_type": self.quant_type,
                "double_quant": self.double_quant, "blocksize": BLOCKSIZE if self.bits == 4 else None,
                "description": self.description}


FORMATS = {
    "nf4": QuantFormat("nf4", 4, "nf4", False, "bitsandbytes 4-bit NormalFloat, fp32 absmax per 64 values"),
    "nf4-dq": QuantFormat("nf4-dq", 4, "nf4", True, "nf4 with double quantization: uint8 absmax per 64 "
                          "values, fp32 absmax per 256 of those"),
    "fp4": QuantFormat("fp4", 4, "fp4", False, "bitsandbytes 4-bit float, fp32 absmax per 64 values"),
    "fp4-dq": QuantFormat("fp4-dq", 4, "fp4", True, "fp4 with double quantization"),
    "int8": QuantFormat("int8", 8, None, False, "bitsandbytes LLM.int8() (Linear8bitLt): int8 weights, fp32 "
                        "absmax per output row, no fp16 weights kept"),
}
NONE = "none"


def get_format(name: str) -> QuantFormat | None:
    """The format for a cell's ``quant`` value; None for ``"none"``."""
    if name == NONE:
        return None
    try:
        return FORMATS[name]
    except (KeyError, TypeError):
        raise QuantError(f"unknown quant {name!r}; known: {', '.join((NONE, *FORMATS))}") from None


def _bnb():
    try:
        import bitsandbytes
    except Exception as e:  # noqa: BLE001 - ImportError or a broken native library
        raise QuantError(f"a quantized base needs bitsandbytes (pip install 'lamda-bench[quant]'): "
                         f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    return bitsandbytes


def is_quantized_linear(module: nn.Module) -> bool:
    """True for a linear this module quantized (LaMDA's target check accepts it)."""
    return getattr(module, MARKER, None) is not None


def quantized_linears(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if is_quantized_linear(m)}


# ---- building ---------------------------------------------------------------------------------
def quantize_base(model: nn.Module, quant: str, parallel: str = "none") -> QuantFormat | None:
    """Replace the model's linears by bitsandbytes' quantized ones, in place (``quant = "none"``:
    nothing). Runs on the model's device: real weights are quantized by bitsandbytes' kernels,
    meta weights get the same shapes through its fake kernels."""
    fmt = get_format(quant)
    if fmt is None:
        return None
    if parallel != "none":
        raise QuantError(f"quant {quant!r} with parallel {parallel!r}: sharding a bitsandbytes base (its packed "
                         "weights and quant state per shard) is not supported here; use parallel = 'none'")
    bnb = _bnb()
    from transformers import BitsAndBytesConfig, PreTrainedModel
    from transformers.integrations.bitsandbytes import replace_with_bnb_linear
    from transformers.quantizers.base import get_keys_to_not_convert
    from transformers.quantizers.quantizers_utils import should_convert_module

    if not isinstance(model, PreTrainedModel):
        raise QuantError(f"quant {quant!r} needs a transformers model (transformers' own quantization path), "
                         f"not {type(model).__name__}")
    dtype = _compute_dtype(model)
    device = next(model.parameters()).device
    _check_device(fmt, device)
    skip = sorted(set(get_keys_to_not_convert(model)) | set(getattr(model, "_keep_in_fp32_modules", None) or []))
    originals = {n: m for n, m in model.named_modules() if type(m) is nn.Linear and should_convert_module(n, skip)}
    if not originals:
        raise QuantError(f"quant {quant!r}: {type(model).__name__} has no nn.Linear to quantize")
    if fmt.bits == 4:
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=fmt.quant_type,
                                    bnb_4bit_use_double_quant=fmt.double_quant, bnb_4bit_compute_dtype=dtype)
    else:
        config = BitsAndBytesConfig(load_in_8bit=True)
    _keep_code_map_off_meta(bnb, device)
    replace_with_bnb_linear(model, modules_to_not_convert=skip, quantization_config=config)
    for name, old in originals.items():
        new = model.get_submodule(name)
        new.train(old.training)
        if old.bias is not None:
            new.bias = nn.Parameter(old.bias.data, requires_grad=False)
        _store(new, old.weight.data, fmt)
    setattr(model, "is_loaded_in_4bit" if fmt.bits == 4 else "is_loaded_in_8bit", True)
    model.lamda_bench_compute_dtype = dtype  # kbit_prepare casts the first parameters to fp32 after this
    model.lamda_bench_quant_skipped = skip
    return fmt


def _check_device(fmt: QuantFormat, device: torch.device) -> None:
    if device.type in ("meta", "cpu", "cuda"):
        return
    raise QuantError(f"quant {fmt.name!r}: no bitsandbytes kernels for device {device.type!r} here (cpu, cuda, "
                     "or meta for an estimate)")


def _keep_code_map_off_meta(bnb, device: torch.device) -> None:
    """bitsandbytes caches the double-quant code map on the device of its first use (and gives
    every linear its own copy of it); a first use on meta would leave a meta map that every later
    real run in the process fails to copy."""
    if device.type == "meta" and "dynamic" not in bnb.functional.name2qmap:
        bnb.functional.name2qmap["dynamic"] = bnb.functional.create_dynamic_map()


def _store(module: nn.Module, weight: torch.Tensor, fmt: QuantFormat) -> None:
    """Quantize ``weight`` (d_out x d_in, float) into ``module`` and expose its quant state as buffers."""
    bnb = _bnb()
    for key in _STATE_BUFFERS:
        module._buffers.pop(key, None)
    device = weight.device
    try:
        if fmt.bits == 4:
            p = bnb.nn.Params4bit(weight, requires_grad=False, blocksize=BLOCKSIZE, quant_type=fmt.quant_type,
                                  compress_statistics=fmt.double_quant, quant_storage=torch.uint8, module=module)
            module.weight = p._quantize(device)
            qs = module.weight.quant_state
            state = {"quant_absmax": qs.absmax, "quant_code": qs.code}
            if qs.nested:
                state.update(quant_offset=qs.offset, quant_nested_absmax=qs.state2.absmax,
                             quant_nested_code=qs.state2.code)
        else:
            p = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
            module.weight = p._quantize(device)
            state = {"quant_scb": module.weight.SCB}
            # CB (the weight's own storage) is handed to the layer per call; SCB stays where PEFT
            # looks for it (DoRA dequantizes the weight at init), as the registered buffer.
            module.weight.CB = None
            module.state.SCB = module.weight.SCB
            if not getattr(module, "_lamda_bench_int8_hook", None):
                module._lamda_bench_int8_hook = module.register_forward_pre_hook(_int8_state)
    except (RuntimeError, NotImplementedError, ValueError, TypeError) as e:
        raise QuantError(f"quant {fmt.name!r}: bitsandbytes cannot quantize on {device.type} here: "
                         f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    for key, t in state.items():
        module.register_buffer(key, t, persistent=False)
    setattr(module, MARKER, fmt.name)


def _int8_state(module: nn.Module, args) -> None:
    """Linear8bitLt reads its int8 matrix and row scales from ``module.state``. They are set from
    the registered tensors at each call (the weight's own storage, no copy), so that after
    ``fake.to_fake`` swapped them in place the state holds the fake ones, not meta leftovers."""
    module.weight.CB = None  # else Linear8bitLt.forward would move it (and SCB) into the state itself
    module.state.CB = module.weight.data
    module.state.SCB = module.weight.SCB = module._buffers["quant_scb"]


def dequantized_weight(module: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """The float weight (d_out x d_in, in ``dtype``) a quantized linear stands for."""
    bnb = _bnb()
    if module.weight.dtype == torch.int8:  # LLM.int8(): row-wise absmax scaling
        scb = module._buffers["quant_scb"]
        return (module.weight.data.to(torch.float32) * scb.unsqueeze(1) / 127.0).to(dtype)
    return bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state).to(dtype)


# ---- methods that read the base weight at init (PiSSA, LaMDA) -----------------------------------
@contextlib.contextmanager
def float_base_for_init(model: nn.Module, fmt: QuantFormat | None, method, targets):
    """QPiSSA's way for methods whose init reads the base weight (``method.init_reads_base``):
    each quantized target gets its dequantized weight as a plain float parameter while the
    method is applied (its SVD runs on it and it writes the residual there), then that weight
    (the residual) is re-quantized in the same format. The module stays the bitsandbytes one, so
    PEFT still dispatches its bnb wrapper. A no-op for other methods and unquantized bases;
    one line for a method that cannot train on a quantized base here (full fine-tuning; DoRA in
    an estimate)."""
    if fmt is not None:
        _check_method(model, fmt, method)
    if fmt is None or not getattr(method, "init_reads_base", False):
        yield
        return
    from .targets import target_linears

    chosen = {n: m for n, m in target_linears(model, targets).items() if is_quantized_linear(m)}
    dtype = _compute_dtype(model)
    for module in chosen.values():
        weight = nn.Parameter(dequantized_weight(module, dtype), requires_grad=False)
        weight.quant_type, weight.compress_statistics = fmt.quant_type, fmt.double_quant  # PEFT's bnb dispatch reads them
        module.weight = weight
        for key in _STATE_BUFFERS:
            module._buffers.pop(key, None)
    yield
    for module in chosen.values():
        _store(module, module.weight.data, fmt)


def _check_method(model: nn.Module, fmt: QuantFormat, method) -> None:
    """One line for the methods that cannot train on a quantized base here."""
    name = getattr(method, "name", "")
    if name == "full":
        raise QuantError(f"quant {fmt.name!r} with method 'full': full fine-tuning trains the base weights, "
                         "which a quantized base stores as integers; use an adapter method or quant = 'none'")
    if name == "dora" and next(model.parameters()).device.type == "meta":
        raise QuantError(f"quant {fmt.name!r} with method 'dora' cannot be estimated: PEFT's DoRA recognises a "
                         "bitsandbytes weight by its class, which a fake tensor does not keep; use mode = 'measure'")


def _compute_dtype(model: nn.Module) -> torch.dtype:
    """The model dtype: that of its first floating-point parameter (the embeddings), or the one
    ``quantize_base`` noted (after ``kbit_prepare`` the embeddings are fp32)."""
    noted = getattr(model, "lamda_bench_compute_dtype", None)
    if noted is not None:
        return noted
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


# ---- facts for the record -----------------------------------------------------------------------
def describe(model: nn.Module) -> dict | None:
    """``info.quant`` of a record: the format, how many linears are quantized, what was kept."""
    linears = quantized_linears(model)
    if not linears:
        return None
    names = {getattr(m, MARKER) for m in linears.values()}
    fmt = FORMATS[names.pop()]
    import bitsandbytes

    info = fmt.to_info()
    info.update(quantized_linears=len(linears), kept_unquantized=list(getattr(_base(model), "lamda_bench_quant_skipped", [])),
                bitsandbytes_version=bitsandbytes.__version__,
                svd_init=("PiSSA / LaMDA: SVD of the dequantized weight, residual re-quantized in the same format "
                          "(QPiSSA's way)"),
                params_note=("params.total counts stored elements: a 4-bit linear holds d_in*d_out/2 uint8 elements"))
    return info


def _base(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (where quantize_base left its notes)."""
    for m in model.modules():
        if hasattr(m, "lamda_bench_quant_skipped"):
            return m
    return model
