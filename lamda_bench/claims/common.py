"""What every claim's verdict is built from: the verdict words, ``ClaimRow``, record helpers.

Thresholds (stated once, used by the claim modules):
- claim 2 (model level): LaMDA "removes" LoRA's extra saved bytes when it removes at least
  ``REMOVED_SHARE_HOLDS`` of LoRA's adapter-attributed bytes in every compared setting;
- claim 3: the claim is "up to 1.32x": it holds where some setting reaches 1.32x under each
  adapter-dtype policy (the maximum under each is reported, and where it lies);
- claim 5: "within seconds" means the whole 7B init (224 targets) under ``SECONDS_HOLDS``;
- claim 6a: "unchanged" means max |y_after - y_before| / max |y_before| under ``INIT_REL_TOL``
  (fp32 rounding of the residual base).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from ..methods.lamda.layer import DEFAULT_FREEZE_FRACTION, DEFAULT_FREEZE_MODE
from ..results.record import CELL
from ..report.records import get

HOLDS, PARTLY, NOT, CANNOT = "holds", "holds partly", "does not hold", "cannot be checked here"
VERDICTS = (HOLDS, PARTLY, NOT, CANNOT)
REMOVED_SHARE_HOLDS = 0.9
CLAIMED_PEAK_RATIO = 1.32
SECONDS_HOLDS = 60.0
INIT_REL_TOL = 1e-5
LAMDA_SOURCE = "LaMDA, arXiv 2406.12832"
PISSA_SOURCE = "PiSSA, arXiv 2404.02948"


@dataclass
class ClaimRow:
    key: str
    claim: str
    source: str
    setting: str
    predicted: str
    measured: str
    verdict: str
    reason: str
    details: list[str] = field(default_factory=list)  # markdown lines for the claim's own section

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"claim {self.key}: verdict {self.verdict!r} is not one of {list(VERDICTS)}")


def cannot(key: str, claim: str, source: str, why: str) -> ClaimRow:
    return ClaimRow(key, claim, source, "n/a", "n/a", "n/a", CANNOT, why)


# ---- record helpers ---------------------------------------------------------------------------

def ok(records: Iterable[dict]) -> list[dict]:
    return [r for r in records if r.get("status") == "ok"]


def option(record: dict, name: str, default: Any = None) -> Any:
    return (get(record, CELL.options, {}) or {}).get(name, default)


def is_probe(record: dict, kind: str | None = None) -> bool:
    probe = record.get("probe")
    return isinstance(probe, dict) and (kind is None or probe.get("kind") == kind)


def training(records: Iterable[dict]) -> list[dict]:
    return [r for r in ok(records) if not is_probe(r)]


_PAIR_FIELDS = ("workload", "layers", "d_in", "d_out", "r", "alpha", "targets", "batch", "seq", "dtype",
                "device", "mode", "gradient_checkpointing", "attn_implementation", "seed", "optimizer",
                "warmup", "steps", "images", "image_size", "vision_layers")


def pair_key(record: dict) -> tuple:
    cell = record.get("cell") or {}
    targets = cell.get("targets")
    key = [tuple(targets) if isinstance(targets, list) else targets]
    key += [cell.get(f) for f in _PAIR_FIELDS if f != "targets"]
    key += [option(record, "autocast_adapter_dtype", True), option(record, "dropout", 0.0)]
    return tuple(key)


def is_plain_lamda(record: dict, freeze_mode: str = DEFAULT_FREEZE_MODE) -> bool:
    """LaMDA at its default schedule (the paper's setting), in ``freeze_mode``."""
    return (get(record, CELL.method) == "lamda"
            and option(record, "freeze_mode", DEFAULT_FREEZE_MODE) == freeze_mode
            and float(option(record, "freeze_fraction", DEFAULT_FREEZE_FRACTION)) == DEFAULT_FREEZE_FRACTION)


def pairs(records: Iterable[dict], first: Callable[[dict], bool], second: Callable[[dict], bool]) -> list[tuple[dict, dict]]:
    """(a, b) of records with the same cell except the method and its own options."""
    a = {pair_key(r): r for r in records if first(r)}
    out = []
    for r in records:
        if second(r) and pair_key(r) in a:
            out.append((a[pair_key(r)], r))
    return out


def lora_lamda_pairs(records: Iterable[dict]) -> list[tuple[dict, dict]]:
    recs = training(records)
    return pairs(recs, lambda r: get(r, CELL.method) == "lora", is_plain_lamda)


def setting_label(record: dict) -> str:
    c = record.get("cell") or {}
    parts = [c.get("workload")]
    if c.get("workload") == "linear":
        parts.append(f"{c.get('d_in')}x{c.get('d_out')}" + (f" x{c['layers']} layers" if c.get("layers") else ""))
    targets = c.get("targets")
    parts += [f"r {c.get('r')}", f"targets {'+'.join(targets) if isinstance(targets, list) else targets}",
              f"batch {c.get('batch')}", f"seq {c.get('seq')}", str(c.get("dtype"))]
    if c.get("gradient_checkpointing"):
        parts.append("grad ckpt")
    if option(record, "autocast_adapter_dtype", True) is False:
        parts.append("adapters in model dtype")
    else:
        parts.append("fp32 adapters")
    parts.append(f"{c.get('mode')} on {c.get('device')}")
    return ", ".join(str(p) for p in parts)


def table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
    return lines


def ratio_text(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}x"


def pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def uniq(values: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(values))
