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
- The launch is three modules: this one (the parent side: scheduling, polling, stopping),
  ``launch/child.py`` (the cell process's side: runner, log, threads, one record back) and
  ``launch/sweep.py`` (``Sweep``: resume, the one writer, progress bar, summary;
  ``complete_record``), the last two shared with the Ray launcher (``launch/ray.py``).
"""

from __future__ import annotations

import os
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, Sequence

from . import forkserver
from ..suite.cell import Cell
from .child import LaunchError, child_main, cpu_threads_per_cell
from .sweep import RunSummary, Sweep

DEFAULT_RUNNER = "lamda_bench.runner:run_cell"
POLL_S = 0.25
# SIGKILL counts as a likely OOM kill when the machine had less than this share of its
# memory available, or the cell process held more than OOM_RSS_SHARE of it, at the last sample.
OOM_AVAILABLE_SHARE = 0.10
OOM_RSS_SHARE = 0.50


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
        target=child_main,
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


def _rel(run: _Running) -> str:
    return f"logs/{run.log_path.name}"


def _utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
