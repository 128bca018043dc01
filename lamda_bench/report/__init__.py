"""Reports from result records: tables, plots, markdown, CSV, and comparison of two runs.

The CLI calls ``write_report(results_dir)`` (``lamda-bench report DIR``) and
``compare(dir_a, dir_b)`` (``lamda-bench compare A B``). Both raise ``ReportError`` with a
one-line message for a directory that holds no results. The names below are imported on
first use, so the launcher can use ``report.axes`` without loading matplotlib.
"""

from importlib import import_module

_WHERE = {"ReportError": "records", "flatten": "records", "load_dir": "records", "compare": "compare",
          "write_csv": "csv_export", "write_report": "markdown"}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
