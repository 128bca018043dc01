"""Reports from result records: tables, plots, markdown, CSV, and comparison of two runs.

The CLI calls ``write_report(results_dir)`` (``lamda-bench report DIR``) and
``compare(dir_a, dir_b)`` (``lamda-bench compare A B``). Both raise ``ReportError`` with a
one-line message for a directory that holds no results. ``write_report`` (matplotlib) is
imported on first use, so the launcher can use ``report.axes`` without loading matplotlib.
"""

from .compare import compare
from .csv_export import write_csv
from .records import ReportError, flatten, load_dir

__all__ = ["ReportError", "compare", "flatten", "load_dir", "write_csv", "write_report"]


def __getattr__(name: str):
    if name == "write_report":
        from .markdown import write_report

        return write_report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
