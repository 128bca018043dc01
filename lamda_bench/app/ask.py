"""The Ask tab's answer: form values (or an uploaded trainer config) into the argument list of
``lamda-bench estimate``, run through the verb's own code (``one_cell.cli``: the same keys, the
same cell id, the same resume), so the page and the command give one record."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import AppError


@dataclass
class Answer:
    record: dict[str, Any]
    reused: bool
    text: str  # the estimate verb's readable answer
    argv: list[str]  # the equivalent `lamda-bench estimate` arguments
    fates: list[str] = field(default_factory=list)  # a trainer config's keys and what became of each
    headline: str | None = None


class _Parser(argparse.ArgumentParser):
    """The estimate verb's flags; a refusal is an AppError (one line), not a SystemExit."""

    def error(self, message: str):
        raise AppError(f"estimate: {message}")


def estimate_parser() -> argparse.ArgumentParser:
    from ..one_cell.cli import add_estimate_arguments

    parser = _Parser(prog="lamda-bench estimate", add_help=False)
    add_estimate_arguments(parser)
    return parser


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def form_argv(model: str, method: str, r: Any, targets: str, batch: Any, seq: Any, dtype: str, precision: str,
              quant: str, optimizer: str, checkpointing: bool, card: str, extra: str = "") -> list[str]:
    """The estimate flags for the form's fields; an empty field is left out (the cell default).
    ``extra``: more ``KEY=VALUE`` lines, each a ``--set``."""
    argv: list[str] = []
    for flag, value in (("--workload", model), ("--method", method), ("--r", r), ("--targets", targets),
                        ("--batch", batch), ("--seq", seq), ("--dtype", dtype), ("--precision", precision),
                        ("--quant", quant), ("--optimizer", optimizer), ("--card", card)):
        text = _text(value)
        if isinstance(value, float) and value.is_integer():
            text = str(int(value))
        if text:
            argv += [flag, text]
    if checkpointing:
        argv += ["--gradient-checkpointing", "true"]
    return argv + set_argv(extra)


def set_argv(extra: str | None) -> list[str]:
    """``KEY=VALUE`` lines (or ``;``-separated) as ``--set`` arguments."""
    argv = []
    for line in _text(extra).replace(";", "\n").splitlines():
        if line.strip():
            if "=" not in line:
                raise AppError(f"more keys: {line.strip()!r}: expected KEY=VALUE, e.g. dropout=0.05")
            argv += ["--set", line.strip()]
    return argv


def file_argv(config: str | None, adapter: str | None, extra: str = "") -> list[str]:
    """``--from FILE`` / ``--adapter FILE`` (uploaded files) and the ``--set`` lines beside them."""
    if not config and not adapter:
        raise AppError("no file: upload a trainer config (axolotl / LLaMA-Factory YAML, TrainingArguments JSON) "
                       "or a PEFT adapter_config.json")
    argv = (["--from", str(config)] if config else []) + (["--adapter", str(adapter)] if adapter else [])
    return argv + set_argv(extra)


def answer(argv: list[str], out: Path) -> Answer:
    """Run ``lamda-bench estimate ARGV --out OUT`` in this process: ``run_estimate``'s steps, the
    answer returned instead of printed. A recorded cell id is read back, not run again."""
    from ..one_cell.cli import build_from, gather_keys, write_fates
    from ..one_cell.cell import run_one
    from ..one_cell.output import describe
    from ..results.files import results_path

    args = estimate_parser().parse_args(argv + ["--out", str(out), "--no-progress"])
    origins: dict[str, str] = {}
    keys, translation = gather_keys(args, origins)
    cell = build_from(keys, origins)
    record, reused = run_one(cell, args.out, progress=False)
    fates: list[str] = []
    if translation is not None:
        write_fates(translation, args.out, cell.id)
        fates = translation.lines()
    return Answer(record, reused, describe(record, reused, str(results_path(args.out))), argv, fates,
                  translation.headline() if translation is not None else None)


def command_line(argv: list[str], out: Path) -> str:
    """The command that gives the same record (uploaded files named by their upload path)."""
    import shlex

    return shlex.join(["lamda-bench", "estimate", *argv, "--out", str(out)])
