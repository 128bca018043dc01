"""The one cell an ``estimate`` asks about: trainer-config keys, then flags, then ``--set``,
validated by the suite parser (so the cell and its id are the ones a hand-written suite with
the same keys gives), run by the local launcher into ``out`` (a recorded id is not re-run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UserError
from ..suite.cell import Cell

SUITE_NAME = "estimate"


class EstimateError(UserError):
    """Bad estimate input (no model, a sweep where one cell is asked for): one line."""


def build_cell(keys: dict[str, Any]) -> Cell:
    """The cell of ``keys`` (cell keys and method options), checked as a suite's [[sweep]] is."""
    from ..suite.parse import parse_suite

    keys = {k: list(v) if isinstance(v, tuple) else v for k, v in keys.items()}
    for key in ("workload", "method"):
        if key not in keys:
            flag = "--" + key
            raise EstimateError(f"no {key}: give {flag} (or --from a trainer config that names it)")
    keys.setdefault("mode", "estimate")
    suite = parse_suite("[[sweep]]\n", source=f"lamda-bench {SUITE_NAME}", default_name=SUITE_NAME, overrides=keys)
    if len(suite.cells) != 1:
        raise EstimateError(f"these keys make {len(suite.cells)} cells; estimate answers one "
                            "(a list value is a sweep: write a suite and use `lamda-bench run`)")
    return suite.cells[0]


def run_one(cell: Cell, out: Path, progress: bool = True) -> tuple[dict[str, Any], bool]:
    """(the cell's record, whether it was already in ``out``): ``run``'s launcher and resume."""
    from ..launch.local import run_cells
    from ..results.files import latest_by_id, load_results, results_path

    if out.exists() and not out.is_dir():
        raise EstimateError(f"{out}: --out exists and is not a directory")
    summary = run_cells([cell], out, suite=SUITE_NAME, progress=progress)
    if summary.interrupted:
        raise KeyboardInterrupt
    record = latest_by_id(load_results(results_path(out)).records).get(cell.id)
    if record is None:
        raise EstimateError(f"{cell.id}: no record came back in {results_path(out)}")
    return record, summary.skipped > 0
