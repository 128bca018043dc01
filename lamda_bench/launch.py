"""Local launcher: every cell in a fresh process, results appended by the parent.

Why this shape:
- A fresh process per cell keeps peaks, allocator caches, global flags and one-time
  workspaces of one cell out of the next; the parent never imports torch or touches CUDA,
  so it can neither skew a measurement nor hold a device context. Cells that may use a GPU
  are spawned (a new interpreter); the others are forked from a server that has imported
  torch, transformers and peft once (``forkserver.py``: ~4 s less per cell). ``start="spawn"``
  spawns every cell; ``launch.start`` in the record says how each cell started.
- A cell that hangs is stopped at ``cell.timeout_s`` (status ``timeout``); a cell process
  that dies (segfault, ``sys.exit``, a kill) becomes an ``error`` record, or ``oom`` when it
  was SIGKILLed while the machine was short of memory (the record says it is a likely
  cause, not a certainty); the sweep goes on either way.
- Only the parent writes ``results.jsonl`` (``results.append_record``: one atomic line per
  cell), so parallel cells never interleave. Resume skips ids already recorded with a final
  status; ``error`` and ``timeout`` are re-run only with ``retry_failed``.
- ``jobs`` cells run at once, but at most one GPU cell per CUDA device (a cell is a GPU cell
  when its device is ``cuda``, or ``auto`` on a machine with a GPU; the GPU count comes from
  NVML, not from CUDA). Parallel CPU *measure* cells share cores: their step times are
  slower than alone; use ``jobs=1`` for timings that matter.
- Each cell process gets an equal share of this machine's cores for its CPU thread pools
  (``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` = cores // jobs, at least 1; values the user
  set are kept). Without it, ``jobs`` processes each running one thread per core made small
  LAPACK calls spin against each other: PiSSA's SVD of MiniLM took 127 s instead of 7 s at
  ``jobs=2`` on 2 cores. The record's ``env.cpu_threads`` says what a cell ran with.
- One run per output directory at a time (``outdir.OutDirLock``, taken before resume reads
  the results), and a cell process dies with its runner (``lifeline.die_with_parent``): a
  killed runner leaves no orphan running without its timeout.
- Ctrl-C (or SIGTERM): children are stopped, the cells already recorded stay,
  ``interrupted`` is set (the CLI exits 130) and the next run resumes.
- Each cell's stdout/stderr go to ``<out>/logs/<id>.log`` (kept only when non-empty), so a
  crash leaves its traceback (faulthandler is on) without garbling the progress bar.
- ``Sweep`` (resume, the one writer, progress bar, summary), ``run_runner`` and
  ``complete_record`` are shared with the Ray launcher (``launch_ray.py``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import signal
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, Callable, Sequence

from . import forkserver
from .cell import Cell
from .lifeline import die_with_parent, die_with_sentinel
from .outdir import OutDirLock, prepare_out_dir
from .results import STATUSES, append_record, completed_ids_of, environment, load_results, results_path
from .errors import UserError

DEFAULT_RUNNER = "lamda_bench.run:run_cell"
POLL_S = 0.25
# SIGKILL counts as a likely OOM kill when the machine had less than this share of its
# memory available, or the cell process held more than OOM_RSS_SHARE of it, at the last sample.
OOM_AVAILABLE_SHARE = 0.10
OOM_RSS_SHARE = 0.50
# A record's error message is cut to this many characters (the full text is in the cell's
# log): records stay a few KiB, so a kill mid-append can tear at most the line being written.
MAX_TEXT_CHARS = 4000


class LaunchError(UserError):
    """Bad launcher input (runner path that does not import, jobs < 1); one line."""


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


# ---- device discovery without CUDA --------------------------------------------------------

def cuda_device_count() -> int:
    """Number of visible NVIDIA GPUs, read through NVML so that this process never creates a
    CUDA context. Honours CUDA_VISIBLE_DEVICES. 0 where NVML or a driver is missing."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return 0
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            count = pynvml.nvmlDeviceGetCount()
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, no library: no GPU for us
        return 0
    if visible is not None:
        count = min(count, len([v for v in visible.split(",") if v.strip()]))
    return count


def is_gpu_cell(cell: Cell, gpus: int) -> bool:
    return cell.device == "cuda" or (cell.device == "auto" and gpus > 0)


# ---- the child side ------------------------------------------------------------------------

def resolve_runner(path: str) -> Callable[[dict, str | None], dict]:
    module_name, _, func_name = path.partition(":")
    if not module_name or not func_name:
        raise LaunchError(f"runner {path!r}: expected 'module:function'")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, func_name)
    except AttributeError:
        raise LaunchError(f"runner {path!r}: module {module_name!r} has no {func_name!r}") from None


def check_runner(path: str) -> None:
    """Fail early, in the parent, on a runner path that cannot import (without importing it)."""
    module_name, _, func_name = path.partition(":")
    if not module_name or not func_name:
        raise LaunchError(f"runner {path!r}: expected 'module:function'")
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise LaunchError(f"runner {path!r}: no module named {module_name!r}")


def run_runner(runner: str, cell: dict, artifacts_dir: str | None) -> dict[str, Any]:
    """Run the cell through the runner in this process; an exception becomes a record (its
    traceback printed to this process's stderr, i.e. the cell's log). Shared by launchers."""
    try:
        record = resolve_runner(runner)(cell, artifacts_dir)
    except Exception as e:  # run_cell never raises; a fake or a broken runner might
        import traceback

        traceback.print_exc()
        oom = isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError"
        first = (str(e).strip().splitlines() or [""])[0]
        record = {"status": "oom" if oom else "error",
                  "error": f"runner raised {type(e).__name__}: {first}".rstrip(": ")}
    if not isinstance(record, dict):
        record = {"status": "error", "error": f"runner returned {type(record).__name__}, not a record dict"}
    return record


def redirect_output(log_path: str) -> None:
    """Send this process's fd 1 and 2 to the cell's log; faulthandler on, so a crash leaves
    its traceback there. Only for a process that runs one cell and exits."""
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    import faulthandler

    faulthandler.enable()


def cpu_threads_per_cell(jobs: int) -> int:
    """Cores this process may use, shared equally by ``jobs`` concurrent cells (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, jobs))


def limit_cpu_threads(threads: int) -> None:
    """Size this process's OpenMP/MKL pools before torch is imported. Where the user set
    either variable, both are left as they are (torch reads them together)."""
    variables = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
    if not any(v in os.environ for v in variables):
        for var in variables:
            os.environ[var] = str(threads)


def _child_main(runner: str, cell: dict, artifacts_dir: str | None, conn, log_path: str,
                cuda_index: int | None, threads: int, parent: dict | None = None) -> None:
    """Entry point of a cell process: run the cell, send back exactly one record. ``parent``:
    the launcher's state, for a child forked from the preloaded server (``forkserver.py``)."""
    import multiprocessing

    launcher = multiprocessing.parent_process()  # no orphan outlives the runner (lifeline.py)
    if parent is None:  # spawned: the launcher is our parent
        die_with_parent(launcher.pid if launcher is not None else None)
    else:  # forked from the preloaded server: watch the launcher itself, and the server
        die_with_parent()
        if launcher is not None:
            die_with_sentinel(launcher.sentinel)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    if parent is not None:
        forkserver.adopt(parent)
    redirect_output(log_path)
    limit_cpu_threads(threads)
    if parent is not None:
        forkserver.set_torch_threads()
    if cuda_index is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(cuda_index)
    conn.send(run_runner(runner, cell, artifacts_dir))
    conn.close()
    # Everything the cell produced is in the record (sent) or in artifacts written
    # atomically before run_cell returned. Skip the interpreter's teardown: destroying a
    # full-size model's module and autograd objects took about 1 s, and the parent waits
    # for this process to end before it starts the next cell.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# ---- the parent side -------------------------------------------------------------------

@dataclass
class _Running:
    cell: Cell
    process: Any
    conn: Any
    started: float
    started_at: str
    gpu: int | None
    log_path: Path
    start: str = "spawn"
    rss_peak: int = 0
    low_memory: bool = False


class Sweep:
    """What every launcher shares: the cells still to run (resume), the one writer of
    ``results.jsonl``, the progress bar and the summary. ``open`` checks everything before
    any write; ``record`` completes and appends one cell's record; ``close`` tidies up."""

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
        from .report.axes import Axes

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


def run_cells(
    cells: Sequence[Cell],
    out_dir: str | Path,
    suite: str,
    runner: str = DEFAULT_RUNNER,
    jobs: int = 1,
    retry_failed: bool = False,
    progress: bool = True,
    gpus: int | None = None,
    start: str = "auto",
    wait_for_lock: bool = False,
) -> RunSummary:
    """Run the cells not yet recorded in ``out_dir/results.jsonl``; append one record each.
    ``start``: "auto" forks cells that do not use CUDA from the preloaded server, "spawn"
    spawns every cell. ``wait_for_lock``: block while another run holds the directory's lock
    (else ``OutDirError``)."""
    if jobs < 1:
        raise LaunchError(f"jobs: {jobs} is less than 1")
    if start not in forkserver.START_METHODS:
        raise LaunchError(f"start: {start!r} is not one of {list(forkserver.START_METHODS)}")
    sweep = Sweep(cells, out_dir, suite, runner, retry_failed, progress, wait_for_lock=wait_for_lock)
    summary, pending = sweep.summary, sweep.pending
    if not pending:
        return summary
    gpus = cuda_device_count() if gpus is None else gpus
    sweep.start()

    import multiprocessing as mp

    spawn = mp.get_context("spawn")
    fork = forkserver.context() if start == "auto" and forkserver.available() else None
    threads = cpu_threads_per_cell(jobs)
    running: list[_Running] = []
    free_gpus = list(range(gpus))

    previous_term = _raise_interrupt_on_sigterm()
    try:
        while pending or running:
            # Start what may start: jobs slots, one GPU cell per free device. Without a GPU,
            # a "cuda" cell takes an ordinary slot and its runner records why it cannot run.
            while len(running) < jobs:
                index = next((i for i, c in enumerate(pending)
                              if not (gpus and is_gpu_cell(c, gpus)) or free_gpus), None)
                if index is None:
                    break
                cell = pending.pop(index)
                gpu = free_gpus.pop(0) if gpus and is_gpu_cell(cell, gpus) else None
                forked = fork is not None and not is_gpu_cell(cell, gpus)
                with _interrupts_held():
                    running.append(_start(fork if forked else spawn, runner, cell, sweep.out_dir, gpu, threads,
                                          forkserver.parent_state() if forked else None))
                sweep.started(cell)
            wait([r.conn for r in running] + [r.process.sentinel for r in running], timeout=POLL_S)
            for run in list(running):
                record = _poll(run)
                if record is None:
                    continue
                running.remove(run)
                if run.gpu is not None:
                    free_gpus.append(run.gpu)
                    free_gpus.sort()
                sweep.record(run.cell, record, run.started_at, run.started,
                             {"launcher": "local", "start": run.start})
    except KeyboardInterrupt:
        summary.interrupted = True
        for run in running:
            _stop(run.process)
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
        sweep.close()
    return summary


def _raise_interrupt_on_sigterm():
    """SIGTERM (a job scheduler, `kill`) stops a run like Ctrl-C does: children stopped,
    finished cells kept. Returns the previous handler (None off the main thread)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


@contextmanager
def _interrupts_held():
    """Hold Ctrl-C and SIGTERM while a cell process starts, then raise KeyboardInterrupt: one
    arriving inside ``Process.start`` (a round trip to the fork server) left a started cell
    outside ``running``, never stopped, writing to a log folder already removed."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if any(previous[sig] is not signal.SIG_IGN for sig in caught):
        raise KeyboardInterrupt


def _start(ctx, runner: str, cell: Cell, out_dir: Path, gpu: int | None, threads: int,
           parent: dict | None) -> _Running:
    receive, send = ctx.Pipe(duplex=False)
    log_path = out_dir / "logs" / f"{cell.id}.log"
    process = ctx.Process(
        target=_child_main,
        args=(runner, cell.to_dict(), str(out_dir), send, str(log_path), gpu, threads, parent),
        name=f"lamda-bench-{cell.id}",
        daemon=True,
    )
    process.start()
    send.close()  # the child holds the only write end: EOF on our side means it is gone
    return _Running(cell=cell, process=process, conn=receive, started=time.monotonic(),
                    started_at=_utc_now(), gpu=gpu, log_path=log_path,
                    start="spawn" if parent is None else "forkserver")


def _poll(run: _Running) -> dict[str, Any] | None:
    """The cell's record if it is finished (a result, a death or a timeout), else None."""
    _sample_memory(run)
    if run.conn.poll():
        try:
            record = run.conn.recv()
        except (EOFError, OSError):
            record = None  # died without sending; explained below from the exit code
        if record is not None:
            run.process.join(timeout=10)
            if run.process.is_alive():
                _stop(run.process)
            if not isinstance(record, dict):
                return {"status": "error", "error": f"runner returned {type(record).__name__}, not a record dict"}
            return record
    if not run.process.is_alive():
        run.process.join()
        return _death_record(run)
    elapsed = time.monotonic() - run.started
    if elapsed > run.cell.timeout_s:
        _stop(run.process)
        return {"status": "timeout",
                "error": f"no result after {run.cell.timeout_s:g} s (timeout_s); the cell process was stopped"}
    return None


def _death_record(run: _Running) -> dict[str, Any]:
    code = run.process.exitcode
    if code is not None and code < 0:
        sig = -code
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        if sig == signal.SIGKILL and run.low_memory:
            return {"status": "oom",
                    "error": f"killed by signal 9 (SIGKILL) while memory was short "
                             f"(cell process peak RSS {run.rss_peak} bytes): likely out of memory"}
        if sig == signal.SIGKILL:
            return {"status": "error",
                    "error": "killed by signal 9 (SIGKILL) without memory pressure seen by the launcher; "
                             "cause unknown (the kernel's OOM killer also sends it)"}
        return {"status": "error", "error": f"cell process killed by signal {sig} ({name}); see {_rel(run)}"}
    return {"status": "error",
            "error": f"cell process exited with code {code} without a result; see {_rel(run)}"}


def _sample_memory(run: _Running) -> None:
    """Track the cell process's RSS and the machine's free memory, to judge a SIGKILL."""
    try:
        import psutil

        rss = psutil.Process(run.process.pid).memory_info().rss
        vm = psutil.virtual_memory()
    except Exception:  # the process is gone or psutil cannot see it
        return
    run.rss_peak = max(run.rss_peak, rss)
    if vm.available < OOM_AVAILABLE_SHARE * vm.total or rss > OOM_RSS_SHARE * vm.total:
        run.low_memory = True


def _stop(process) -> None:
    if process.is_alive():
        process.terminate()
        process.join(timeout=5)
    if process.is_alive():
        process.kill()
        process.join(timeout=5)


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


def _rel(run: _Running) -> str:
    return f"logs/{run.log_path.name}"


def _utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
