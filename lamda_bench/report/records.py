"""Reading result records for presentation: load a results directory, pick fields by
dotted path, flatten a record into one row, and describe a record's shape (d, tokens).

The record format is documented in docs/records.md; parsing and schema checks live in
``lamda_bench.results.files`` (this module only presents what it returns).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from ..results.record import AT_PEAK, CELL, ENV, INFO, MEMORY, RANK_AT_PEAK, get  # noqa: F401 - get re-exported: readers import it from here
from ..results.files import RESULTS_FILE, latest_by_id, load_results
from ..errors import UserError


class ReportError(UserError):
    """A results directory that cannot be reported on; the message is one line."""


def load_dir(results_dir: str | Path) -> list[dict[str, Any]]:
    """Records of ``results_dir/results.jsonl``, the last record per id (a retried cell
    supersedes its failed attempt), in first-seen order. Each skipped line and each unusable
    value is reported as a ``results.DataWarning`` naming file and line (the CLI prints them
    and counts them)."""
    results_dir = Path(results_dir)
    path = results_dir / RESULTS_FILE
    if not results_dir.is_dir():
        raise ReportError(f"{results_dir}: not a directory")
    if not path.is_file():
        raise ReportError(f"{path}: no results file (run `lamda-bench run SUITE --out {results_dir}` first)")
    return list(latest_by_id(load_results(path).warn(path).records).values())


def is_ok(record: dict[str, Any]) -> bool:
    return record.get("status") == "ok"


def cell_key(record: dict[str, Any], leave_out: tuple[str, ...]) -> str:
    """The record's cell without ``leave_out`` and without keys at their id-neutral defaults (so a
    record written before such a key existed pairs with one that holds its default): what
    ``agreement`` and ``compare --across`` pair records on."""
    from ..suite.cell import ID_NEUTRAL_DEFAULTS

    cell = {k: v for k, v in (record.get("cell") or {}).items() if k not in leave_out}
    for key, default in ID_NEUTRAL_DEFAULTS.items():
        if cell.get(key, default) == default:
            cell.pop(key, None)
    return json.dumps(cell, sort_keys=True, default=str)


def mode(record: dict[str, Any]) -> str:
    """Resolved mode: 'measure' (real tensors) or 'estimate' (fake tensors, nothing allocated)."""
    from ..results.record import run_mode

    return str(run_mode(record, "unknown"))


def device(record: dict[str, Any]) -> str:
    """'cpu', or 'cuda (NVIDIA H100 80GB HBM3)' where the record names the device."""
    from ..results.record import run_device

    dev = str(run_device(record, "unknown"))
    name = get(record, ENV.device_name)
    if not name:
        return dev
    return str(name) if dev in str(name).lower() else f"{dev} ({name})"


def bytes_at_peak(record: dict[str, Any]) -> dict[str, int]:
    """Live bytes by category at the peak: every category that adds up to ``memory.peak``.
    A sharded cell's rank-0 breakdown (``memory.per_rank.at_peak``) adds the all-gathered
    parameters and communication buffers that ``memory.at_peak`` leaves out."""
    block = RANK_AT_PEAK if get(record, MEMORY.per_rank) else AT_PEAK
    return {c: get(record, block.path(c), 0) or 0 for c in block.keys}


def tokens(record: dict[str, Any]) -> int | None:
    batch, seq = get(record, CELL.batch), get(record, CELL.seq)
    if batch is None or seq is None:
        return None
    return int(batch) * int(seq)


def width(record: dict[str, Any]) -> int | None:
    """The model width d the r-dim claim is plotted against: ``cell.d_in`` for the linear
    workload (its default when unset), else ``info.hidden_size`` if the record has it, else
    the named workload's hidden size (``hidden_size`` / ``d_model`` of its config); None
    for a workload this harness does not know."""
    d = get(record, CELL.d_in)
    if d is None:
        d = get(record, INFO.hidden_size)
    if d is None:
        d = _workload_width(str(get(record, CELL.workload, "")))
    return None if d is None else int(d)


@functools.lru_cache(maxsize=None)
def _workload_width(name: str) -> int | None:
    from ..model.workloads import LINEAR_DEFAULT_DIM, WorkloadError, get_workload

    try:
        workload = get_workload(name)
    except WorkloadError:
        return None
    if workload.family == "linear":
        return LINEAR_DEFAULT_DIM
    return workload.config.get("hidden_size") or workload.config.get("d_model")


def method_label(record: dict[str, Any]) -> str:
    """Method name, with its label options (LaMDA's freeze mode) where not at their default
    (``Method.label``); the bare name for a method this version does not register."""
    from ..methods import all_methods

    name = str(get(record, CELL.method, "?"))
    method = all_methods().get(name)
    return method.label(get(record, CELL.options) or {}) if method else name


# ---- flat table (CSV) ---------------------------------------------------------------------

# Columns that lead every flat row, so a spreadsheet reader finds them first.
LEADING_COLUMNS = ("id", "suite", "status", "error")
# Per-step lists: long and better read from the JSONL; the flat table leaves them out.
EXCLUDED_PREFIXES = ("series",)


def flatten(record: dict[str, Any]) -> dict[str, Any]:
    """Nested record -> {"memory.at_peak.grads": 123, ...}. Scalars stay as they are; lists
    (e.g. ``cell.targets``) become JSON text; ``series`` is left out (see the JSONL)."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if prefix.split(".")[0] in EXCLUDED_PREFIXES:
            return
        if isinstance(node, dict):
            if not node and prefix:
                out[prefix] = None
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        elif isinstance(node, (list, tuple)):
            out[prefix] = json.dumps(node)
        else:
            out[prefix] = node

    walk(record, "")
    return out


def flat_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Union of the rows' keys: leading columns first, then in order of first appearance."""
    seen: dict[str, None] = {c: None for c in LEADING_COLUMNS}
    for row in rows:
        for key in row:
            seen.setdefault(key, None)
    return list(seen)
