"""A cell process dies with the runner that started it.

The runner enforces a cell's timeout and is the only writer of its record. If the runner is
killed (``kill -9``, a closed terminal's SIGHUP, an OOM kill), an orphaned cell would keep
running for minutes with no timeout, hold memory or a GPU, and write side files that no
record will ever name. ``die_with_parent`` makes the kernel send this process SIGKILL when
its parent dies (Linux ``prctl(PR_SET_PDEATHSIG)``), and checks the parent is still there
afterwards (it may have died before the call). Where prctl is not available, a daemon
thread polls the parent pid instead and ends the process within ``poll_s``.

Called first thing in a cell process's entry point (``launch.child.child_main``); a launcher
that starts cells from an intermediate process (a fork server) calls it in both.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int | None = None, poll_s: float = 1.0) -> str:
    """Arrange for this process to end when its parent does; returns how ("prctl" or
    "watchdog"). ``parent_pid``: the pid the caller knows as its parent (default: the
    current parent); if the parent already changed, the process exits at once."""
    expected = parent_pid if parent_pid is not None else os.getppid()
    how = "prctl" if _set_pdeathsig(signal.SIGKILL) else "watchdog"
    if how == "watchdog":
        threading.Thread(target=_watch, args=(expected, poll_s), name="lamda-bench-lifeline",
                         daemon=True).start()
    if os.getppid() != expected:  # the parent died before the signal was armed
        os._exit(1)
    return how


def _set_pdeathsig(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent_pid: int, poll_s: float) -> None:
    while os.getppid() == parent_pid:
        time.sleep(poll_s)
    os._exit(1)


def die_with_sentinel(sentinel: int) -> None:
    """End this process when ``sentinel`` becomes ready: the read end of a pipe whose write end
    only the launcher holds, so the kernel closes it when the launcher dies however it dies.

    For a cell forked from a fork server, whose parent is the server, not the launcher: the
    server exits only when every holder of its "alive" pipe is gone, and each forked cell
    holds one, so the parent-death signal alone would never fire."""
    def watch() -> None:
        from multiprocessing.connection import wait

        wait([sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="lamda-bench-lifeline", daemon=True).start()

