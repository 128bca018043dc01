"""Reports from result records: tables, plots, markdown, CSV, and comparison of two runs.

The CLI calls ``write_report(results_dir)`` (``lamda-bench report DIR``) and
``compare(dir_a, dir_b)`` (``lamda-bench compare A B``). Both raise ``ReportError`` with a
one-line message for a directory that holds no results.
"""

from .compare import compare
from .csv_export import write_csv
from .markdown import write_report
from .records import ReportError, flatten, load_dir

__all__ = ["ReportError", "compare", "flatten", "load_dir", "write_csv", "write_report"]
