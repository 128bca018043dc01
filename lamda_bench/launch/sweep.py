"""What every launcher shares (the local one, ``launch/local.py``, and Ray's, ``launch/ray.py``): the
cells still to run (resume), the one writer of ``results.jsonl``, the progress bar, the
summary of a launch, and the record as written (``complete_record``)."""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..suite.cell import Cell
from .child import check_runner
from ..results.outdir import OutDirLock, prepare_out_dir
from ..results.files import STATUSES, append_record, completed_ids_of, environment, load_results, results_path

# A record's error message is cut to this many characters (the full text is in the cell's
# log): records stay a few KiB, so a kill mid-append can tear at most the line being written.
MAX_TEXT_CHARS = 4000


@dataclass
class RunSummary:
    """What a launch did: cells planned, skipped (already recorded), the records written now."""

    out_dir: Path
    planned: int = 0
    skipped: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def statuses(self) -> Counter:
        return Counter(r.get("status") for r in self.records)


class Sweep:
    """What every launcher shares: the cells still to run (resume), the one writer of
    ``results.jsonl``, the progress bar and the summary. Constructing one checks everything
    before any write (runner, output directory, results file, lock); ``start`` opens the
    logs folder and the bar; ``record`` completes and appends one cell's record; ``close``
    tidies up."""

    def __init__(self, cells: Sequence[Cell], out_dir: str | Path, suite: str, runner: str,
                 retry_failed: bool, progress: bool, wait_for_lock: bool = False):
        check_runner(runner)
        self.out_dir = Path(out_dir)
        self.suite = suite
        self.path = results_path(self.out_dir)
        # Writable, compatible (ResultsError raised before anything is written), then ours
        # alone (outdir.py); the results are read again under the lock for resume.
        prepare_out_dir(self.out_dir, self.path)
        load_results(self.path)
        self.lock = OutDirLock(self.out_dir, wait=wait_for_lock).acquire()
        try:
            loaded = load_results(self.path)
        except BaseException:
            self.lock.release()
            raise
        self.summary = RunSummary(out_dir=self.out_dir, planned=len(cells), warnings=loaded.warnings(self.path))
        done = completed_ids_of(loaded.records, retry_failed=retry_failed)
        self.pending: list[Cell] = [c for c in cells if c.id not in done]
        self.summary.skipped = len(cells) - len(self.pending)
        if not self.pending:
            self.lock.release()
        self.progress = progress
        self.bar = None
        self.env: dict[str, Any] | None = None
        self.running: dict[str, str] = {}  # cell id -> its label on the progress bar
        from ..report.axes import Axes

        self.axes = Axes.of([{"cell": c.to_dict()} for c in cells])

    def start(self) -> None:
        """Called once there is something to run: logs folder, environment, progress bar."""
        from tqdm import tqdm

        (self.out_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.env = environment()
        self.bar = tqdm(total=len(self.pending), unit="cell", file=sys.stderr, disable=not self.progress,
                        dynamic_ncols=True, desc=self.suite)

    def started(self, cell: Cell) -> None:
        """Name the cell on the progress bar while it runs (settings that vary in the suite)."""
        self.running[cell.id] = self.axes.label({"cell": cell.to_dict()}, skip=()) or cell.id
        self._describe()

    def _describe(self) -> None:
        if self.bar is None:
            return
        names = list(self.running.values())
        shown = ", ".join(names[:2]) + (f" +{len(names) - 2} more" if len(names) > 2 else "")
        self.bar.set_description(f"{self.suite}: {shown}" if shown else self.suite, refresh=True)

    def log_path(self, cell: Cell) -> Path:
        return self.out_dir / "logs" / f"{cell.id}.log"

    def record(self, cell: Cell, record: dict[str, Any], started_at: str, started: float,
               launch: dict[str, Any]) -> dict[str, Any]:
        """Complete the runner's record (``complete_record``), append it, advance the bar."""
        record = complete_record(record, cell, self.suite, self.env or environment(), started_at,
                                 round(time.monotonic() - started, 3), launch, self.log_path(cell))
        append_record(self.path, record)
        self.summary.records.append(record)
        self.running.pop(cell.id, None)
        self._describe()
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({k: v for k, v in self.summary.statuses.items()}, refresh=True)
        return record

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        logs = self.out_dir / "logs"
        if logs.is_dir() and not any(logs.iterdir()):
            logs.rmdir()  # only empty logs: nothing worth keeping
        self.lock.release()


def complete_record(record: dict[str, Any], cell: Cell, suite: str, env: dict[str, Any], started_at: str,
                    launch_wall: float, launch: dict[str, Any], log_path: Path) -> dict[str, Any]:
    """The record as written: the suite cell's id, the suite, timing, an env, the log path.
    ``launch`` names the launcher (plus where the cell ran); its wall_s is filled here."""
    record = dict(record)
    record["id"] = cell.id  # the id of the suite's (unresolved) cell: what resume matches
    record["suite"] = suite
    if record.get("status") not in STATUSES:
        record["error"] = f"runner returned status {record.get('status')!r} (not one of {list(STATUSES)})"
        record["status"] = "error"
    record.setdefault("error", None)
    if isinstance(record["error"], str) and len(record["error"]) > MAX_TEXT_CHARS:
        cut = len(record["error"]) - MAX_TEXT_CHARS
        record["error"] = record["error"][:MAX_TEXT_CHARS] + f" ... [{cut} more characters: see the cell's log]"
    record.setdefault("cell", cell.to_dict())
    if not record.get("env"):  # a runner that failed early may leave env null
        record["env"] = env
    record.setdefault("started_at", started_at)
    # wall_s is the runner's own; the launcher's includes process start and imports.
    record.setdefault("wall_s", launch_wall)
    record["launch"] = {**launch, "wall_s": launch_wall}
    if log_path.exists():
        if log_path.stat().st_size:
            artifacts = dict(record.get("artifacts") or {})
            artifacts.setdefault("log", f"logs/{log_path.name}")
            record["artifacts"] = artifacts
        else:
            log_path.unlink()
    return record
