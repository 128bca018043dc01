"""A Python API for notebooks: run cells and get the results as a pandas DataFrame.

    import lamda_bench
    df = lamda_bench.run("suites/ci.toml", out="/tmp/ci")     # runs, resumes, returns this suite's rows
    df = lamda_bench.load("reports/llama7b-cpu")              # any results directory
    df[df["cell.method"] == "lora"][["cell.r", "memory.peak"]]

Rows are records (the last one per cell id), columns the record's dotted fields as in
``results.csv`` (``memory.peak``, ``cell.options.freeze_mode``, ...), raw units. pandas is an
optional extra (``pip install 'lamda-bench[pandas]'``); it is imported only when used.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable
from .errors import UserError

if TYPE_CHECKING:
    import pandas

    from .suite.cell import Cell
    from .suite.parse import Suite


class ApiError(UserError):
    """A bad argument to ``run`` or ``load``; the message is one line."""


def _pandas():
    try:
        import pandas
    except ImportError:
        raise ApiError("lamda_bench.load/run return a pandas DataFrame: pip install 'lamda-bench[pandas]'") from None
    return pandas


def frame(records: list[dict[str, Any]]) -> "pandas.DataFrame":
    """Records -> DataFrame, one flat row each (``report.flatten``; per-step ``series`` left out)."""
    from .report.records import flat_columns, flatten

    pd = _pandas()
    rows = [flatten(r) for r in records]
    return pd.DataFrame(rows, columns=flat_columns(rows) if rows else None)


def load(results_dir: str | Path) -> "pandas.DataFrame":
    """The records of ``results_dir/results.jsonl`` as a DataFrame, first-seen order."""
    from .report.records import load_dir

    return frame(load_dir(results_dir))


def _suite(suite_or_cells: Any, overrides: dict[str, Any] | None, name: str) -> "Suite":
    from .suite.cell import Cell
    from .suite.parse import Catalog, Suite, _Parser, load_suite

    if isinstance(suite_or_cells, Suite):
        if overrides:
            raise ApiError("overrides apply to a suite file or to cell tables, not to a loaded Suite")
        return suite_or_cells
    if isinstance(suite_or_cells, (str, Path)):
        return load_suite(suite_or_cells, overrides=overrides)
    items = [suite_or_cells] if isinstance(suite_or_cells, (Cell, dict)) else list(suite_or_cells)
    if not items:
        raise ApiError("run: no cells given")
    if all(isinstance(c, Cell) for c in items):
        if overrides:
            raise ApiError("overrides apply to a suite file or to cell tables, not to Cell objects")
        return Suite(name=name, description="", path="<python>", cells=tuple(dict.fromkeys(items)))
    if all(isinstance(c, dict) for c in items):
        # Each dict is a [[sweep]] table, validated and expanded as a suite file's would be
        # (a list value sweeps; method defaults filled in, so ids match the CLI's).
        doc = {"suite": {"name": name}, "sweep": [dict(c, **(overrides or {})) for c in items]}
        return _Parser("<python>", Catalog.default()).parse(doc, name)
    raise ApiError("run: expected a suite path, a Suite, Cell objects, or dicts of cell keys")


def run(suite_or_cells: "str | Path | Suite | Cell | dict | Iterable[Cell | dict]", out: str | Path, *,
        jobs: int = 1, overrides: dict[str, Any] | None = None, retry_failed: bool = False,
        progress: bool = True, name: str = "notebook", trace: str = "auto") -> "pandas.DataFrame":
    """Run every cell not yet recorded in ``out`` (as ``lamda-bench run``: resumes, one
    process per cell) and return the records of these cells, in their order.

    ``suite_or_cells``: a suite file path, a ``Suite``, ``Cell`` objects, or dicts of cell
    keys (each read as a ``[[sweep]]`` table: ``{"workload": "linear", "method": ["lora",
    "lamda"], "d_in": 256}``). ``overrides`` are ``--set`` values. ``name`` is the suite name
    recorded for cells given in Python. ``trace="full"`` traces every block of each estimate
    instead of certified depth extrapolation (docs/extrapolation.md); ids do not change."""
    from .launch.local import run_cells
    from .report.records import load_dir

    suite = _suite(suite_or_cells, overrides, name)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ApiError(f"{out}: out exists and is not a directory")
    cells = with_trace(list(suite.cells), trace)
    summary = run_cells(cells, out, suite=suite.name, jobs=jobs, retry_failed=retry_failed,
                        progress=progress)
    if summary.interrupted:
        raise KeyboardInterrupt
    latest = {r.get("id"): r for r in load_dir(out)}
    return frame([latest[c.id] for c in suite.cells if c.id in latest])


def with_trace(cells: list, trace: str) -> list:
    """The cells with ``trace`` set (``run``'s and ``fit``'s ``--trace``); "auto" leaves them as they are."""
    import dataclasses

    from .suite.cell import TRACES

    if trace not in TRACES:
        raise ApiError(f"trace {trace!r} is not one of {list(TRACES)}")
    return cells if trace == "auto" else [dataclasses.replace(c, trace=trace) for c in cells]
