"""Which settings vary within a result set, and how to name them in a row or a label.

A table or plot that leaves out a setting that varies shows rows a reader cannot tell
apart (three "lora r64" rows that differ in targets and adapter dtype); one that shows
every setting drowns the few that matter. ``Axes.of(records)`` finds the cell keys and
method options that take more than one value, so tables, the run summary and plot labels
show exactly those and name the constant ones once, in a header line.

Method options are judged per method: ``freeze_mode`` varies when LaMDA records hold both
``split`` and ``mask``, not because LoRA records have no ``freeze_mode`` at all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from ..results.values import is_number

# Cell keys in display order. ``timeout_s`` is left out: it bounds a run, it does not
# change what is measured.
CELL_AXES = ("workload", "d_in", "d_out", "layers", "method", "r", "alpha", "targets", "batch", "seq",
             "dtype", "precision", "quant", "kbit_prepare", "world_size", "parallel", "reshard_after_forward",
             "gradient_checkpointing",
             "optimizer", "lr", "steps", "warmup", "attn_implementation", "seed", "device", "mode", "card",
             "allocator")
# Keys said only where some record sets them off their default, so a report without them reads as
# before; a set one is an axis like the others (a preference objective trains something else).
SAID_WHEN_SET = ("objective", "precompute_ref_log_probs")
# Recipe keys said likewise only where set, that train the same model on the same data (not shape
# axes): the loss kernel and activation offloading. A varying one is a column and in each label.
RECIPE_WHEN_SET = ("loss", "offload_activations")
# The axes that make a "shape group": cells that train the same model on the same data under
# the same precision policy and sharding, so their methods can be ranked against each other.
SHAPE_AXES = ("workload", "d_in", "d_out", "layers", "batch", "seq", "dtype", "precision", "quant", "kbit_prepare",
              "world_size", "parallel", "device", "mode", "card", "allocator", *SAID_WHEN_SET)

AXIS_TITLES = {"gradient_checkpointing": "checkpointing", "attn_implementation": "attention",
               "kbit_prepare": "kbit prepared"}
OPTION_TITLES = {"autocast_adapter_dtype": "adapters", "freeze_mode": "freeze"}
# Short prefixes for plot labels ("r16 b4 s1024").
SHORT = {"r": "r", "batch": "b", "seq": "s", "layers": "L", "d_in": "d", "d_out": "d_out=", "world_size": "W"}


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


# Keys a method ignores: full fine-tuning has no rank, scaling or target set, so its
# recorded r=8 is shown as "-" rather than read as a setting.
IGNORED_BY = {"full": ("r", "alpha", "targets")}


def cell_value(record: dict[str, Any], axis: str) -> Any:
    """The cell's value on ``axis``; a key added since the record was written (``quant``,
    ``precision``, ...) reads as its default, so old and new records of one setup group together."""
    from ..results.record import run_device, run_mode
    from ..suite.cell import ID_NEUTRAL_DEFAULTS

    if axis in ("device", "mode"):  # what the figures are: the resolution (the cell keeps "auto")
        return (run_device if axis == "device" else run_mode)(record)
    cell = record.get("cell") or {}
    if axis not in cell and axis in ID_NEUTRAL_DEFAULTS and cell:
        return ID_NEUTRAL_DEFAULTS[axis]
    return cell.get(axis)


def at_default(record: dict[str, Any], key: str) -> bool:
    """Whether the record leaves an id-neutral key (``loss``, ``objective``, ...) at its default."""
    from ..suite.cell import ID_NEUTRAL_DEFAULTS

    return cell_value(record, key) == ID_NEUTRAL_DEFAULTS[key]


def shown_value(record: dict[str, Any], axis: str) -> Any:
    """The cell value a table shows: None where the record's method ignores the key."""
    if axis in IGNORED_BY.get(str(cell_value(record, "method")), ()):
        return None
    return cell_value(record, axis)


def option_value(record: dict[str, Any], name: str) -> Any:
    return ((record.get("cell") or {}).get("options") or {}).get(name)


def show(value: Any) -> str:
    """A cell value for a table: lists joined, None as '-', booleans as yes/no."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def show_option(name: str, value: Any, dtype: Any = None) -> str:
    """``autocast_adapter_dtype`` reads as the dtype the adapters train in (PEFT's autocast
    keeps them in fp32; without it they take the model's ``dtype``)."""
    if name == "autocast_adapter_dtype":
        if value:
            return "fp32"
        return f"{dtype} (no autocast)" if dtype in (None, "fp32") else str(dtype)
    return show(value)


@dataclass
class Axes:
    """The varying and constant settings of a result set."""

    varying: list[str] = field(default_factory=list)  # cell keys, in CELL_AXES order
    constant: dict[str, Any] = field(default_factory=dict)
    varying_options: dict[str, list[str]] = field(default_factory=dict)  # method -> option names
    constant_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def of(cls, records: Iterable[dict[str, Any]], exclude: Iterable[str] = ()) -> "Axes":
        records = list(records)
        excluded = set(exclude)
        axes = cls()
        for axis in (*CELL_AXES, *SAID_WHEN_SET, *RECIPE_WHEN_SET):
            if axis in excluded:
                continue
            if axis in (*SAID_WHEN_SET, *RECIPE_WHEN_SET) and all(at_default(r, axis) for r in records):
                continue
            values = {_key(cell_value(r, axis)): cell_value(r, axis) for r in records}
            if len(values) > 1:
                axes.varying.append(axis)
            elif values:
                axes.constant[axis] = next(iter(values.values()))
        by_method: dict[str, list[dict[str, Any]]] = {}
        for rec in records:
            by_method.setdefault(str(cell_value(rec, "method")), []).append(rec)
        for method, recs in by_method.items():
            names = sorted({k for r in recs for k in ((r.get("cell") or {}).get("options") or {})})
            for name in names:
                values = {_key(option_value(r, name)): option_value(r, name) for r in recs}
                if len(values) > 1:
                    axes.varying_options.setdefault(method, []).append(name)
                else:
                    axes.constant_options.setdefault(method, {})[name] = next(iter(values.values()))
        return axes

    @property
    def has_options(self) -> bool:
        return bool(self.varying_options)

    def columns(self) -> list[str]:
        """Table headers: one per varying cell key, then 'method options' where any vary."""
        return [AXIS_TITLES.get(a, a) for a in self.varying] + (["method options"] if self.has_options else [])

    def row(self, record: dict[str, Any]) -> list[str]:
        values = [show(shown_value(record, a)) for a in self.varying]
        if self.has_options:
            values.append(self.options_text(record) or "-")
        return values

    def options_text(self, record: dict[str, Any]) -> str:
        method = str(cell_value(record, "method"))
        dtype = cell_value(record, "dtype")
        return " ".join(f"{OPTION_TITLES.get(n, n)}={show_option(n, option_value(record, n), dtype)}"
                        for n in self.varying_options.get(method, []))

    def label(self, record: dict[str, Any], skip: Iterable[str] = ("mode",)) -> str:
        """Compact plot label: method first, then every other varying key and option."""
        skipped = set(skip)
        parts = [str(cell_value(record, "method"))]
        for axis in self.varying:
            if axis in skipped or axis == "method":
                continue
            value = shown_value(record, axis)
            if value is None and axis in ("r", "alpha", "targets"):
                continue
            if axis in SHORT and value is not None:
                parts.append(f"{SHORT[axis]}{value}")
            elif axis == "gradient_checkpointing":
                parts.append("ckpt" if value else "no ckpt")
            elif axis == "offload_activations":
                parts.append("offload" if value else "no offload")
            elif axis == "targets":
                parts.append(f"targets={show(value)}")
            else:
                parts.append(f"{AXIS_TITLES.get(axis, axis)}={show(value)}")
        options = self.options_text(record)
        if options:
            parts.append(options)
        return " ".join(parts)

    def header(self) -> str:
        """'Held fixed: dtype=bf16, ...; method options held fixed: lora dropout=0.0; ...'."""
        fixed = ", ".join(f"{AXIS_TITLES.get(a, a)}={show(v)}" for a, v in self.constant.items() if v is not None)
        dtype = self.constant.get("dtype")
        opts = "; ".join(f"{m}: " + ", ".join(f"{OPTION_TITLES.get(n, n)}={show_option(n, v, dtype)}"
                                             for n, v in sorted(o.items()) if v is not None)
                         for m, o in sorted(self.constant_options.items()) if any(v is not None for v in o.values()))
        out = f"Held fixed: {fixed or 'nothing'}."
        if opts:
            out += f" Method options held fixed: {opts}."
        return out


def shape_key(record: dict[str, Any]) -> str:
    return _key([cell_value(record, a) for a in SHAPE_AXES])


def shape_order(records: list[dict[str, Any]]) -> Callable[[dict[str, Any]], tuple]:
    """A sort key for shape groups: numbers ascending (W1 W2 W4 W8, not in the order the cells
    finished), other values in the order they first appear in ``records`` (the suite's order)."""
    first_seen: dict[tuple[str, str], int] = {}
    for i, rec in enumerate(records):
        for axis in SHAPE_AXES:
            first_seen.setdefault((axis, _key(cell_value(rec, axis))), i)

    def key(record: dict[str, Any]) -> tuple:
        parts = []
        for axis in SHAPE_AXES:
            value = cell_value(record, axis)
            parts.append((0, value) if is_number(value) else (1, first_seen[(axis, _key(value))]))
        return tuple(parts)

    return key


def shape_title(record: dict[str, Any], axes: Axes) -> str:
    """The shape axes that vary across groups, e.g. 'llama2-7b b4 s1024'."""
    parts = []
    for axis in SHAPE_AXES:
        if axis not in axes.varying:
            continue
        value = cell_value(record, axis)
        if value is None or (axis == "d_out" and value == cell_value(record, "d_in")):
            continue
        if axis == "quant":  # 'nf4 base'; an unquantized base goes unsaid
            if value != "none":
                parts.append(f"{value} base")
            continue
        if axis == "precompute_ref_log_probs":  # the reference's log-probs precomputed; not: unsaid
            if value:
                parts.append("ref precomputed")
            continue
        if axis == "kbit_prepare":  # PEFT's prepare_model_for_kbit_training ran; not: unsaid
            if value:
                parts.append("kbit-prepared")
            continue
        parts.append(f"{SHORT[axis]}{value}" if axis in SHORT else show(value))
    return " ".join(parts) or "all cells"
