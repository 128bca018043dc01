"""What a suite value may be, per cell key (``CELL_KEYS``): the type and range checks the suite
parser runs on every value before a cell exists. The rules that span keys, and the ones the
runner applies too, are the cell's own (``Cell.validate``); the integer minimums come from there.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

from .cell import ATTENTION, DEVICES, DTYPES, EXPERTS, LOSSES, MIN_INTS, MODES, OBJECTIVES, OPTIMIZERS, PARALLEL, PRECISIONS, QUANTS, TRACES, Cell
from .conventions import canonical_dtype
from ..errors import UserError
from ..hints import did_you_mean

# Integers are stored as 64-bit and numbers as finite doubles wherever a record goes (JSON
# readers, pandas, torch); a value beyond either is refused here rather than written as
# something no standard JSON reader takes back.
INT64_MAX = 2**63 - 1


def _int(minimum: int) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, int):
            raise BadValue(f"expected an integer, got {v!r}")
        if abs(v) > INT64_MAX:
            raise BadValue(f"{v} does not fit in 64 bits")
        if v < minimum:
            raise BadValue(f"{v} is less than {minimum}")
        return v
    return check


def _number(positive: bool = True) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise BadValue(f"expected a number, got {v!r}")
        if isinstance(v, int) and abs(v) > INT64_MAX or isinstance(v, float) and not math.isfinite(v):
            raise BadValue(f"{v!r} is not a finite number")
        if positive and not v > 0:
            raise BadValue(f"{v} is not > 0")
        return float(v)
    return check


def _choice(choices: tuple[str, ...]) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        if not isinstance(v, str):
            raise BadValue(f"expected one of {list(choices)}, got {v!r}")
        if v not in choices:
            raise BadValue(f"{v!r} is not one of {list(choices)}{hint(v, choices)}")
        return v
    return check


def _optimizer(v: Any) -> Any:
    """An HF Trainer optimizer name (optimizers/catalogue.py): a did-you-mean, or the package it needs."""
    from ..optimizers.catalogue import problem

    found = problem(v) if isinstance(v, str) else f"expected one of {list(OPTIMIZERS)}, got {v!r}"
    if found:
        raise BadValue(found)
    return v


def _str(v: Any) -> Any:
    if not isinstance(v, str) or not v:
        raise BadValue(f"expected a non-empty string, got {v!r}")
    return v


def _bool(v: Any) -> Any:
    if not isinstance(v, bool):
        raise BadValue(f"expected true or false, got {v!r}")
    return v


def _targets(v: Any) -> Any:
    if isinstance(v, str) and v:
        return v
    if isinstance(v, (list, tuple)) and v and all(isinstance(x, str) and x for x in v):
        return tuple(v)
    raise BadValue(f"expected a preset name or a list of module-name suffixes, got {v!r}")


def _image_size(v: Any) -> Any:
    if isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= INT64_MAX:
        return v
    if isinstance(v, str):
        from ..model.vlm import parse_image_size
        from ..model.config import WorkloadError
        try:
            parse_image_size(v)
        except WorkloadError as e:
            raise BadValue(str(e)) from None
        return v
    raise BadValue(f"expected pixels as one side (448) or 'HxW' ('448x672'), got {v!r}")


def _card(v: Any) -> Any:
    """A card name as the card table spells it (``h100-80gb`` -> ``H100-80GB``): one id per card."""
    from ..card.cards import get_card

    if not isinstance(v, str):
        raise BadValue(f"expected a card name such as 'H100-80GB', got {v!r}")
    try:
        return get_card(v, "card").name
    except UserError as e:
        raise BadValue(str(e)) from None


CELL_KEYS: dict[str, Callable[[Any], Any]] = {
    "workload": _str,
    "method": _str,
    "r": _int(MIN_INTS["r"]),
    "alpha": _number(),
    "targets": _targets,
    "layers": _int(MIN_INTS["layers"]),
    "d_in": _int(MIN_INTS["d_in"]),
    "d_out": _int(MIN_INTS["d_out"]),
    "batch": _int(MIN_INTS["batch"]),
    "seq": _int(MIN_INTS["seq"]),
    "dtype": lambda v: _choice(DTYPES)(canonical_dtype(v)),
    "device": _choice(DEVICES),
    "mode": _choice(MODES),
    "steps": _int(MIN_INTS["steps"]),
    "warmup": _int(MIN_INTS["warmup"]),
    "optimizer": _optimizer,
    "lr": _number(),
    "gradient_checkpointing": _bool,
    "attn_implementation": _choice(ATTENTION),
    "seed": _int(MIN_INTS["seed"]),
    "world_size": _int(MIN_INTS["world_size"]),
    "parallel": _choice(PARALLEL),
    "reshard_after_forward": _bool,
    "timeout_s": _number(),
    "precision": _choice(PRECISIONS),
    "quant": _choice(QUANTS),
    "experts_implementation": _choice(EXPERTS),
    "output_router_logits": _bool,
    "kbit_prepare": _bool,
    "images": _int(MIN_INTS["images"]),
    "image_size": _image_size,
    "vision_layers": _int(MIN_INTS["vision_layers"]),
    "trace": _choice(TRACES),
    "card": _card,
    "allocator": _str,  # PYTORCH_CUDA_ALLOC_CONF syntax, checked by Cell.card_problem
    "loss": _choice(LOSSES),
    "offload_activations": _bool,
    "objective": _choice(OBJECTIVES),
    "precompute_ref_log_probs": _bool,
}
assert set(CELL_KEYS) == {f.name for f in dataclasses.fields(Cell)} - {"options"}


class BadValue(Exception):
    """Internal: a value problem, turned into a SuiteError once file and key are known."""


hint = did_you_mean  # the one "did you mean" helper (hints.py)
