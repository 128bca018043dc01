"""The output directory of a run: created, checked writable and locked before any cell runs.

Why:
- Two runners on one ``--out`` would both resume from the same file, run every pending cell
  twice, and write the same side files at once. ``OutDirLock`` takes an exclusive
  ``fcntl.flock`` on ``DIR/.lock`` for the whole run: a second runner exits 2 with one line
  naming the holder's pid (or, with ``wait``, blocks until the first one is done and then
  resumes from what it recorded). The kernel drops the lock when its holder dies, even by
  SIGKILL, so a stale ``.lock`` file never blocks anyone; the file itself is left in place
  (removing it would race with a runner that just opened it).
- ``--out`` under a regular file, in a read-only place, or a read-only ``results.jsonl`` is
  found here, in one line (exit 2), before the first cell runs, not after its result is lost.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from ..errors import UserError

LOCK_FILE = ".lock"


class OutDirError(UserError):
    """An output directory that cannot be used (not creatable, not writable, in use); one line."""


def prepare_out_dir(out_dir: str | Path, results_file: str | Path) -> Path:
    """Create ``out_dir`` (and parents) and check that ``results_file`` in it can be appended to;
    ``OutDirError`` with one line otherwise. Writes nothing into an existing results file."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutDirError(f"{out_dir}: --out exists and is not a directory") from None
    except NotADirectoryError:
        raise OutDirError(f"{out_dir}: --out is under a path that is a file, not a directory") from None
    except OSError as e:
        raise OutDirError(f"{out_dir}: cannot create the output directory: {e.strerror or e}") from None
    if not out_dir.is_dir():
        raise OutDirError(f"{out_dir}: --out exists and is not a directory")
    results_file = Path(results_file)
    if results_file.exists() and not results_file.is_file():
        raise OutDirError(f"{results_file}: exists and is not a regular file")
    try:  # the same open the writer uses; O_APPEND with no write changes nothing
        if results_file.exists():
            os.close(os.open(results_file, os.O_WRONLY | os.O_APPEND))
        elif not os.access(out_dir, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "the directory is not writable")
    except OSError as e:
        raise OutDirError(f"{results_file}: cannot be written ({e.strerror or e}); "
                          f"nothing was run") from None
    return out_dir


class OutDirLock:
    """Exclusive lock on ``out_dir/.lock`` (``fcntl.flock``), held until ``release``.
    The lock file holds the holder's pid, for the message a second runner prints."""

    def __init__(self, out_dir: str | Path, wait: bool = False):
        self.path = Path(out_dir) / LOCK_FILE
        self.wait = wait
        self.fd: int | None = None

    def acquire(self) -> "OutDirLock":
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as e:
            raise OutDirError(f"{self.path}: cannot create the lock file: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
        except OSError as e:
            holder = _read_pid(fd)
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise OutDirError(f"{self.path}: cannot lock: {e.strerror or e}") from None
            who = f"pid {holder}" if holder else "another process"
            raise OutDirError(f"{self.path.parent}: another lamda-bench run ({who}) is writing to this "
                              f"directory; wait for it (or pass --wait), or use another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the only descriptor drops the flock
            self.fd = None

    def __del__(self) -> None:  # a Sweep dropped without close (an exception before its run)
        self.release()

    def __enter__(self) -> "OutDirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None
