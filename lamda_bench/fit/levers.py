"""The levers ``fit --advise`` may pull: each an ordinary cell-key change, in a table.

A lever is one entry of ``LEVERS``: the cell keys it changes, its steps from a base cell (the
mildest first; none where it does not apply), whether a step further never raises the peak
(``monotone``, what the search prunes with), and what it costs:

- ``measured``: its cost is compute, and the search reads it from the cells' own FLOP counts
  (gradient checkpointing recomputes each block's forward in the backward: the backward FLOPs
  of the checkpointed cell say how much);
- ``caveat``: its cost is not compute (the weights, the numerics, the data, the capacity, more
  cards), so it is a named, documented caveat, never a number the harness did not measure;
- ``host_cost``: its cost is also host RAM and host-link traffic, read from the cells' own records
  (activation offloading: ``memory.host_offloaded_peak`` and twice the offloaded bytes a step),
  and with a card the seconds those copies take at the card's link rate (``card/rates.py``).

Adding a lever is one entry (``optimizer`` below is one). ``monotone=False``: the search then
never infers one of its steps from another. A step whose value the cell keys do not accept
(``suite/values.py``) is left out, so an entry may name values a key does not take yet.
``kbit_prepare`` is not a lever: PEFT's preparation casts part of the base to fp32, so it only
ever raises the peak (docs/quantized-base.md); it is a recipe to match, not a way to fit.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..errors import UserError
from ..suite.cell import Cell

Change = dict[str, Any]  # cell keys (or method options) -> value


class LeverError(UserError):
    """A bad --levers value (one line)."""


@dataclass(frozen=True)
class Lever:
    """One lever. ``steps(cell)`` lists its changes from ``cell``, the mildest first."""

    name: str
    keys: tuple[str, ...]
    steps: Callable[[Cell], list[Change]]
    monotone: bool
    caveat: str | None = None  # None: its only cost is compute, measured from the FLOP counts
    excludes: tuple[str, ...] = ()  # levers it cannot be combined with (one line says why in ``caveat``)
    premise: str = ""  # why a step further never raises the peak (monotone levers), for the docs
    host_cost: bool = False  # its cells record host RAM and host-link bytes (offload_activations)

    @property
    def cost(self) -> str:
        return "caveat" if self.caveat else "measured"


def _has_option(cell: Cell, option: str) -> bool:
    from ..methods import get_method
    from ..methods.base import MethodError

    try:
        return option in get_method(cell.method).options
    except MethodError:
        return False


def _valid(key: str, value: Any) -> bool:
    """Whether the cell key accepts ``value`` (method options are checked by the method)."""
    from ..suite.values import CELL_KEYS, BadValue

    check = CELL_KEYS.get(key)
    if check is None:
        return True
    try:
        check(value)
    except BadValue:
        return False
    return True


def _choices(key: str, order: Sequence[Any]) -> Callable[[Cell], list[Change]]:
    """Steps along ``order`` after the cell's own value; none when the value is not in ``order``
    (the order is what makes the lever monotone, so it says nothing about another value)."""

    def steps(cell: Cell) -> list[Change]:
        now = getattr(cell, key)
        rest = list(order[order.index(now) + 1:]) if now in order else []
        return [{key: v} for v in rest if _valid(key, v)]

    return steps


def _halving(key: str, count: int, least: int) -> Callable[[Cell], list[Change]]:
    """``key`` halved ``count`` times, not below ``least``."""

    def steps(cell: Cell) -> list[Change]:
        value, out = getattr(cell, key), []
        for _ in range(count):
            value //= 2
            if value < least:
                break
            out.append({key: value})
        return out

    return steps


def _checkpointing(cell: Cell) -> list[Change]:
    return [] if cell.gradient_checkpointing else [{"gradient_checkpointing": True}]


def _adapter_dtype(cell: Cell) -> list[Change]:
    """Adapters in the model's dtype: only for a method with PEFT's option, on a 16-bit model."""
    if cell.dtype == "fp32" or not _has_option(cell, "autocast_adapter_dtype"):
        return []
    return [] if cell.option("autocast_adapter_dtype", True) is False else [{"autocast_adapter_dtype": False}]


def _fewer_targets(cell: Cell) -> list[Change]:
    """All projections -> the attention ones only (a subset of them, so never more adapters)."""
    return [{"targets": "attn"}] if cell.targets == "all" and cell.method != "full" else []


def _rank(cell: Cell) -> list[Change]:
    return [] if cell.method == "full" else _halving("r", 3, 1)(cell)


def _quant(cell: Cell) -> list[Change]:
    return [] if cell.method == "full" else _choices("quant", ("none", "int8", "nf4"))(cell)


def _eight_bit_optimizer(cell: Cell) -> list[Change]:
    """AdamW -> bitsandbytes' 8-bit AdamW -> its paged variant, where the method and layout take
    them (optimizers/catalogue.py: LaMDA's freezing and LoRA-FA's own optimizer refuse them)."""
    from ..analytic import family
    from ..optimizers.catalogue import TORCH_ADAMW, method_problem

    if cell.optimizer not in TORCH_ADAMW:
        return []
    steps = [{"optimizer": name} for name in ("adamw_bnb_8bit", "paged_adamw_8bit")]
    return [s for s in steps if _valid("optimizer", s["optimizer"])
            and method_problem(s["optimizer"], family(cell.method), cell.parallel) is None]


def _sharding(cell: Cell) -> list[Change]:
    """More ranks under FSDP2, per card: 2, 4, 8 times the cell's ranks (from one device or fsdp2)."""
    if cell.parallel not in ("none", "fsdp2"):
        return []
    return [{"world_size": cell.world_size * k, "parallel": "fsdp2"} for k in (2, 4, 8)]


def _offload(cell: Cell) -> list[Change]:
    """Saved tensors to host memory (TRL's OffloadActivations, model/offload.py); not under sharding."""
    return [] if cell.offload_activations or cell.parallel != "none" else [{"offload_activations": True}]


def _expandable(cell: Cell) -> list[Change]:
    """The caching allocator's expandable segments, on a card whose default settings the cell
    replays (a cell without a card has no allocator modelled: the lever would change nothing)."""
    return [{"allocator": "expandable"}] if cell.card is not None and cell.allocator == "default" else []


LEVERS: dict[str, Lever] = {lever.name: lever for lever in (
    Lever("gradient_checkpointing", ("gradient_checkpointing",), _checkpointing, monotone=True,
          premise="a checkpointed block keeps only its input for the backward"),
    Lever("autocast_adapter_dtype", ("autocast_adapter_dtype",), _adapter_dtype, monotone=True, excludes=("quant",),
          caveat="adapter weights, gradients and optimizer state in the model's 16-bit dtype instead of "
                 "PEFT's fp32 default: the updates are rounded to 16 bits (not measured here); no effect on a "
                 "quantized base (PEFT keeps its adapters in fp32 there)",
          premise="the same tensors in 2 bytes instead of 4"),
    Lever("quant", ("quant",), _quant, monotone=True, excludes=("world_size", "autocast_adapter_dtype"),
          caveat="a quantized frozen base (bitsandbytes): the adapter trains against dequantized weights, "
                 "not the model's own (the quantization error is not measured here); cannot be sharded",
          premise="fewer bytes per frozen weight (int8, then nf4; nf4-dq left out: its double "
                  "quantization raised the peak on tiny-llama)"),
    Lever("r", ("r",), _rank, monotone=True,
          caveat="a smaller rank: fewer trainable parameters, less adapter capacity (quality not measured here)",
          premise="fewer adapter parameters and r-wide activations"),
    Lever("targets", ("targets",), _fewer_targets, monotone=True,
          caveat="adapters on the attention projections only: fewer adapted layers, less capacity "
                 "(quality not measured here)",
          premise="a subset of the adapted layers"),
    Lever("seq", ("seq",), _halving("seq", 3, 1), monotone=True,
          caveat="a shorter sequence: different training data (truncated or re-chunked), fewer tokens per step",
          premise="fewer tokens per step"),
    Lever("optimizer", ("optimizer",), _eight_bit_optimizer, monotone=False, excludes=("world_size",),
          caveat="bitsandbytes' 8-bit AdamW (paged: its state in CUDA unified memory, counted in the peak "
                 "unless --paged-evictable): the update is computed from blockwise-quantized moments "
                 "(its effect on training not measured here); not modelled under sharding",
          premise=""),
    Lever("offload_activations", ("offload_activations",), _offload, monotone=False, excludes=("world_size",),
          caveat="saved tensors of 1 KiB or more copied to host RAM in forward and back in backward (TRL's "
                 "OffloadActivations): host RAM and host-link traffic, stated per row from the records; the step "
                 "waits on those copies as far as they do not overlap compute (CUDA streams; not modelled)",
          premise="", host_cost=True),
    Lever("expandable_segments", ("allocator",), _expandable, monotone=False,
          caveat="PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True in the training run's environment: the "
                 "allocator grows one mapped segment instead of caching fixed ones, so freed blocks fragment "
                 "less; no cost that the harness measures (torch's mapping calls are not timed here); only "
                 "with a card, whose allocator is modelled",
          premise=""),
    Lever("world_size", ("world_size", "parallel"), _sharding, monotone=False, excludes=("quant", "optimizer"),
          caveat="sharding over more cards (FSDP2, per card): N cards, and each step's all-gathers and "
                 "reduce-scatters, whose time is not measured here; the global batch is N x the per-card batch",
          premise=""),
)}


def parse_levers(text: str | None, axis: str) -> list[Lever]:
    """``--levers a,b``: the named levers (all by default); one line for an unknown name. The
    searched axis (``seq`` under ``--batch``) is never a lever."""
    from ..hints import did_you_mean

    if text is None:
        names = list(LEVERS)
    else:
        names = [n.strip() for n in str(text).split(",") if n.strip()]
        if not names:
            raise LeverError(f"--levers {text!r}: expected lever names separated by commas ({', '.join(LEVERS)})")
        for name in names:
            if name not in LEVERS:
                raise LeverError(f"--levers: unknown lever {name!r}{did_you_mean(name, list(LEVERS))}; "
                                 f"known: {', '.join(LEVERS)}")
        if axis in names:
            raise LeverError(f"--levers {axis}: {axis} is the axis fit searches; it cannot also be a lever")
    return [LEVERS[n] for n in dict.fromkeys(names) if n != axis]


def apply_change(cell: Cell, change: Change) -> Cell:
    """The cell with ``change`` applied: cell fields replaced, method options merged."""
    fields = {f.name for f in dataclasses.fields(Cell)}
    direct = {k: v for k, v in change.items() if k in fields}
    options = {k: v for k, v in change.items() if k not in fields}
    if options:
        direct["options"] = tuple(sorted({**dict(cell.options), **options}.items()))
    return dataclasses.replace(cell, **direct)


def set_flags(change: Change) -> list[str]:
    """The change as ``--set KEY=VALUE`` strings (TOML values), so a suggestion can be rerun."""
    def toml(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return f'"{v}"'
        return str(v)

    return [f"{k}={toml(v)}" for k, v in change.items()]
