"""Cell processes forked from a preloaded server: a fresh process per cell without paying the
imports per cell.

Importing torch, transformers and peft takes ~4 s of a ~8 s full-size estimate cell on a 2-core
machine. The local launcher therefore starts cells that do not use CUDA through Python's
``multiprocessing`` "forkserver": one server process per launcher process imports those
libraries once (``lamda_bench.launch._preload``), then forks one child per cell. Each cell still runs
in its own process, which exits when the cell is done, so peaks, caches and any global state a
cell changes (a module attribute, ``torch.set_default_dtype``) die with it; the per-cell timeout,
the OOM/crash records and the log redirection are the launcher's, unchanged.

Why it is safe to fork that server:
- it never initialises CUDA (the preload imports modules only; cells that may use a GPU are
  started with "spawn" instead, see ``launch.run_cells``);
- it runs no torch op, so torch's intra-op thread pool (and OpenMP's) does not exist yet when
  it forks: forking a process that has started threads can leave a lock held forever in the
  child. The child sets its own thread count (``set_torch_threads``) before any op.

What a forked child takes from the launcher rather than from the server (which was started with
the launcher's state at its start): environment variables, working directory and ``sys.path``
are copied over at each cell's start (``parent_state`` / ``adopt``). Settings that a library
reads only when it is imported (e.g. ``OMP_NUM_THREADS`` for OpenMP) are the server's; thread
counts are set explicitly for that reason.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from typing import Any

PRELOAD_MODULE = "lamda_bench.launch._preload"
START_METHODS = ("auto", "spawn")  # auto: the fork server for cells that do not use CUDA


def available() -> bool:
    """Whether this platform has the forkserver start method (Linux and macOS do)."""
    return "forkserver" in multiprocessing.get_all_start_methods()


def context():
    """The forkserver context, its server preloading ``PRELOAD_MODULE``. The server is started
    by the first process started from it and lives as long as this (launcher) process."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([PRELOAD_MODULE])
    return ctx


def parent_state() -> dict[str, Any]:
    """What a forked cell must see as a spawned one would: the launcher's state right now."""
    return {"environ": dict(os.environ), "cwd": os.getcwd(), "sys_path": list(sys.path)}


def adopt(state: dict[str, Any]) -> None:
    """In the forked child: take the launcher's environment, working directory and sys.path."""
    os.environ.clear()
    os.environ.update(state["environ"])
    os.chdir(state["cwd"])
    sys.path[:] = state["sys_path"]


def set_torch_threads() -> None:
    """Size torch's intra-op pool from OMP_NUM_THREADS (set by the launcher, or by the user):
    the server imported torch before the cell's value was known. No-op without torch."""
    torch = sys.modules.get("torch")
    value = os.environ.get("OMP_NUM_THREADS", "")
    if torch is not None and value.isdigit() and int(value) >= 1:
        torch.set_num_threads(int(value))
