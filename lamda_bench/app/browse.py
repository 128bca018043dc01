"""The Browse tab: a results directory read by the report's own loader, filtered with
``compare --where``'s rules, sorted by any cell key or record path, with the report's headline and
its plots drawn again for the filtered selection, and ``compare`` of two directories."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

from . import AppError
from ..report.units import fmt_bytes, fmt_count

# Columns every table shows (cell keys), then peak and trainable parameters.
SHOWN = ("workload", "method", "r", "targets", "batch", "seq", "dtype", "precision", "quant", "optimizer",
         "gradient_checkpointing", "card", "mode")


def load(directory: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """(records, the loader's warnings: lines skipped, values unusable), as ``report`` reads them."""
    from ..report.records import load_dir
    from ..results.files import DataWarning

    path = Path(str(directory or "").strip()).expanduser()
    if not str(directory or "").strip():
        raise AppError("no results directory: pick one or type its path")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        records = load_dir(path)
    return records, [str(w.message) for w in caught if issubclass(w.category, DataWarning)]


def lookup(record: dict[str, Any], key: str) -> Any:
    """A cell key (``r``), a method option (``freeze_fraction``) or a dotted path (``memory.peak``)."""
    from ..report.records import get

    if "." in key:
        return get(record, key)
    cell = record.get("cell") or {}
    return cell[key] if key in cell else (cell.get("options") or {}).get(key)


def keys(records: list[dict[str, Any]]) -> list[str]:
    """Every cell key and method option the records hold, for the sort and filter menus."""
    found: dict[str, None] = {}
    for rec in records:
        for k, v in (rec.get("cell") or {}).items():
            if k == "options" and isinstance(v, dict):
                found.update(dict.fromkeys(v))
            else:
                found[k] = None
    return list(found)


def select(records: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """``KEY=VALUE`` conditions (one per line, or comma-free ``;``-separated), each required."""
    from ..report.compare import parse_where, select as where_select

    conditions = [c.strip() for c in str(where or "").replace(";", "\n").splitlines() if c.strip()]
    return where_select(records, parse_where(conditions)) if conditions else list(records)


def order(records: list[dict[str, Any]], sort_key: str, descending: bool = False) -> list[dict[str, Any]]:
    """Sorted by ``sort_key`` (missing values last, numbers before text)."""
    if not sort_key:
        return list(records)
    present = [r for r in records if lookup(r, sort_key) is not None]
    missing = [r for r in records if lookup(r, sort_key) is None]

    def key(rec: dict[str, Any]) -> tuple:
        v = lookup(rec, sort_key)
        return (0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0, str(v))

    return sorted(present, key=key, reverse=descending) + missing


def table(records: list[dict[str, Any]], sort_key: str = "") -> tuple[list[str], list[list[Any]]]:
    """(headers, rows): the shown cell keys, the sort key when it is another, peak, trainable
    parameters, status and id."""
    from ..report.records import get
    from ..results.record import MEMORY, PARAMS

    extra = [sort_key] if sort_key and sort_key not in SHOWN else []
    headers = ["status", *SHOWN, *extra, "peak", "trainable params", "id"]
    rows = []
    for rec in records:
        cells = [_show(lookup(rec, k)) for k in (*SHOWN, *extra)]
        rows.append([rec.get("status"), *cells, fmt_bytes(get(rec, MEMORY.peak)), fmt_count(get(rec, PARAMS.trainable)),
                     rec.get("id")])
    return headers, rows


def _show(v: Any) -> Any:
    if isinstance(v, list):
        return ",".join(map(str, v))
    return "" if v is None else v


def headline(records: list[dict[str, Any]]) -> str:
    """The report's headline (Markdown) for these records."""
    from ..report.headline import headline as report_headline
    from ..report.records import is_ok

    return report_headline([r for r in records if is_ok(r)])


def plots(records: list[dict[str, Any]], results_dir: str | Path, into: Path | None = None) -> list[tuple[str, str]]:
    """The report's plots drawn again for ``records`` into a new folder (never the results
    directory's own ``plots/``): [(png path, title)]."""
    from ..report.plots import draw_all

    if not records:
        return []
    folder = Path(tempfile.mkdtemp(prefix="plots-", dir=into))
    drawn = draw_all(records, Path(str(results_dir).strip()), folder)
    return [(str(p.path), p.title) for p in drawn if p.path is not None]


def compare(dir_a: str, dir_b: str, where: str = "") -> str:
    """``lamda-bench compare A B --where ...`` as Markdown."""
    from ..report.compare import compare as report_compare

    for name, d in (("A", dir_a), ("B", dir_b)):
        if not str(d or "").strip():
            raise AppError(f"compare: no directory {name}")
    conditions = [c.strip() for c in str(where or "").replace(";", "\n").splitlines() if c.strip()]
    return report_compare(Path(dir_a.strip()), Path(dir_b.strip()), where=conditions)
