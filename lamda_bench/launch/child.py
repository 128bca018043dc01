"""The cell process's side of a launch: find the runner, run one cell through it with the
process set up for it (output to the cell's log, CPU thread pools sized, the CUDA device
chosen, dying with its launcher), and send back exactly one record.
``run_runner`` and ``redirect_output`` serve the Ray launcher too (``launch/ray.py``)."""

from __future__ import annotations

import gc
import importlib
import importlib.util
import os
import signal
import sys
from typing import Any, Callable

from . import forkserver
from ..errors import UserError
from .lifeline import die_with_parent, die_with_sentinel


class LaunchError(UserError):
    """Bad launcher input (runner path that does not import, jobs < 1); one line."""


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


def freeze_heap() -> None:
    """Move every object alive now (the imported libraries' modules, classes and functions)
    out of the cyclic collector's sight (``gc.freeze``). Each tracked step collects twice
    (``measure/garbage.py``), and a collection walks every tracked object: with torch,
    transformers and peft imported that was about 0.25 s a collection, 1.5 s of a 3.5 s
    extrapolated LLaMA2-7B estimate (six collections); frozen, about 0.02 s. What a cell
    creates afterwards is collected as before, so no record moves. Called once per process,
    before the cell: objects frozen are never collected, so nothing of a cell may be alive."""
    gc.collect()
    gc.freeze()


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


def child_main(runner: str, cell: dict, artifacts_dir: str | None, conn, log_path: str,
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
    try:
        resolve_runner(runner)  # its imports, before the freeze; run_runner reports a failure
    except Exception:  # noqa: BLE001 - run_runner meets it again and makes it the record
        pass
    freeze_heap()
    conn.send(run_runner(runner, cell, artifacts_dir))
    conn.close()
    # Everything the cell produced is in the record (sent) or in artifacts written
    # atomically before run_cell returned. Skip the interpreter's teardown: destroying a
    # full-size model's module and autograd objects took about 1 s, and the parent waits
    # for this process to end before it starts the next cell.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
