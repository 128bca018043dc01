"""The Fit tab's answer: the form into ``lamda-bench fit``'s own flags and run (``fit.cli``), its
printed answer captured, its table read back from ``fit.json`` and its plots (``fit.png``, and
``fit-advise.png`` with advice) shown. One fit at a time (the app's queue), so the captured
stdout is this fit's."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import AppError
from .ask import set_argv

TABLE_HEADERS = ["method", "r", "fixed", "max", "peak at max", "next", "peak at next", "verdict", "probes"]


@dataclass
class FitAnswer:
    text: str
    rows: list[list[Any]]
    plot: Path | None
    advice_plot: Path | None
    argv: list[str]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise AppError(f"fit: {message}")


def fit_argv(model: str, methods: list[str] | str, budget: str, axis: str, value: Any, r: Any, targets: str,
             optimizer: str, card: str, advise: bool, extra: str = "") -> list[str]:
    """``fit`` flags for the form: ``axis`` "seq" fixes the sequence (the largest batch is found),
    "batch" fixes the batch."""
    methods = [m for m in ([methods] if isinstance(methods, str) else methods or []) if m]
    if not methods:
        raise AppError("fit: choose at least one method")
    if axis not in ("seq", "batch"):
        raise AppError(f"fit: fixed axis {axis!r}: expected seq or batch")
    argv = ["--workload", str(model or "").strip(), "--method", *methods, "--budget", str(budget or "").strip()]
    for flag, v in ((f"--{axis}", value), ("--r", r), ("--targets", targets), ("--optimizer", optimizer),
                    ("--card", card)):
        text = "" if v is None else (str(int(v)) if isinstance(v, float) and v.is_integer() else str(v).strip())
        if text:
            argv += [flag, text]
    return argv + (["--advise"] if advise else []) + set_argv(extra)


def answer(argv: list[str], out: Path) -> FitAnswer:
    """Run ``lamda-bench fit ARGV --out OUT`` in this process and read what it wrote."""
    from ..fit.cli import add_fit_arguments, run_fit

    parser = _Parser(prog="lamda-bench fit", add_help=False)
    add_fit_arguments(parser)
    args = parser.parse_args(argv + ["--out", str(out), "--no-progress", "--jobs", "1"])
    for name in ("fit.json", "fit.png", "fit-advise.png"):
        (out / name).unlink(missing_ok=True)  # nothing stale shown beside this answer
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        run_fit(args)
    rows = json.loads((out / "fit.json").read_text(encoding="utf-8")) if (out / "fit.json").is_file() else []
    return FitAnswer(printed.getvalue(), [_row(r) for r in rows],
                     out / "fit.png" if (out / "fit.png").is_file() else None,
                     out / "fit-advise.png" if (out / "fit-advise.png").is_file() else None, argv)


def _row(row: dict[str, Any]) -> list[Any]:
    from ..report.units import fmt_bytes

    axis = row.get("axis", "batch")
    fixed = "seq" if axis == "batch" else "batch"
    return [row.get("method"), row.get("r"), f"{fixed} {row.get(fixed)}", row.get(f"max_{axis}"),
            fmt_bytes(row.get("peak_at_max")), row.get("next"), fmt_bytes(row.get("peak_at_next")),
            row.get("verdict"), row.get("probes")]
