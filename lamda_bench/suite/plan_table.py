"""The planned cells of a suite as a table (``lamda-bench run --dry-run``): one row per cell, with
whether it is already recorded and its id, so a plan can be read before anything runs."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..terminal import printable


def print_plan(suite, recorded: dict[str, dict[str, Any]], out: Path) -> None:
    from tabulate import tabulate

    rows = []
    for i, cell in enumerate(suite.cells, start=1):
        rec = recorded.get(cell.id)
        targets = cell.targets if isinstance(cell.targets, str) else ",".join(cell.targets)
        shape = f"{cell.d_in}x{cell.d_out}" if cell.d_in is not None else ""
        options = " ".join([f"{k}={v}" for k, v in cell.options] + other_keys(cell))
        rows.append([i, cell.workload, shape, cell.layers or "", cell.method, cell.r, targets, cell.batch,
                     cell.seq, " ".join(v for v in (cell.dtype, cell.precision, cell.quant,
                                             "kbit-prepared" if cell.kbit_prepare else "none") if v not in ("pure", "none")),
                     cell.device, cell.mode, options,
                     rec.get("status") if rec else "", cell.id])
    headers = ["#", "workload", "d_in x d_out", "layers", "method", "r", "targets", "batch", "seq",
               "dtype", "device", "mode", "options", "recorded", "id"]
    print(printable(f"{suite.name}: {suite.description}".rstrip(": ")))
    print(tabulate([[printable(v) if isinstance(v, str) else v for v in row] for row in rows], headers=headers))
    todo = sum(1 for c in suite.cells if c.id not in recorded)
    print(printable(f"{len(suite.cells)} cells planned, {todo} to run into {out / 'results.jsonl'} "
                    f"(dry run: nothing written)"))


# The plan's own columns, and keys every suite sets that say nothing about what is measured.
PLAN_COLUMNS = {"workload", "d_in", "d_out", "layers", "method", "r", "targets", "batch", "seq", "dtype",
                "precision", "quant", "kbit_prepare", "device", "mode", "options"}
PLAN_QUIET = {"alpha", "steps", "warmup", "timeout_s", "seed", "lr"}


def other_keys(cell) -> list[str]:
    """The cell's other keys off their default (objective=dpo, loss=..., card=...): without them
    two planned cells that differ only there would read as the same row."""
    skip = PLAN_COLUMNS | PLAN_QUIET
    return [f"{f.name}={getattr(cell, f.name)}" for f in dataclasses.fields(cell)
            if f.name not in skip and getattr(cell, f.name) != f.default]
