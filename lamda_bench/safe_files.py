"""Reading a file that a suite (or a user) names, without letting it exhaust the host.

A suite can name files (a suite file itself, LaMDA++'s ``allocation = "file.json"``). A path
such as ``/dev/zero``, ``/dev/stdin``, a FIFO or a multi-gigabyte file would otherwise be read
without limit, or block forever. ``read_small_file`` refuses anything that is not a regular
file, and any file larger than its limit, with one line naming the path; the size is checked
on the open descriptor (no race with a swap of the path) and the read itself is bounded.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from .errors import UserError

# Suite files and allocation files are a few KiB; 16 MiB leaves room for anything honest.
DEFAULT_LIMIT = 16 * 2**20


class UnsafeFileError(UserError):
    """A named file that is missing, not a regular file, or too large; one line."""


class MissingFileError(UnsafeFileError):
    """The named file does not exist (callers often word this case their own way)."""


def check_small_file(path: str | Path, what: str, limit: int = DEFAULT_LIMIT) -> None:
    """``UnsafeFileError`` unless ``path`` is a regular file of at most ``limit`` bytes; reads nothing."""
    _open_checked(path, what, limit, read=False)


def read_small_file(path: str | Path, what: str, limit: int = DEFAULT_LIMIT) -> bytes:
    """The bytes of ``path`` (a regular file of at most ``limit`` bytes), or ``UnsafeFileError``
    whose message starts with ``what`` and the path (e.g. "suite file x.toml: ...")."""
    return _open_checked(path, what, limit, read=True)


def _open_checked(path: str | Path, what: str, limit: int, read: bool) -> bytes:
    path = Path(path)
    label = f"{what} {path}"
    try:
        # O_NONBLOCK: opening a FIFO without a writer must not hang before the type check.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise MissingFileError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise UnsafeFileError(f"{label}: is a directory, not a file") from None
    except OSError as e:
        raise UnsafeFileError(f"{label}: cannot open: {e.strerror or e}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise UnsafeFileError(f"{label}: is a directory, not a file")
        if not stat.S_ISREG(info.st_mode):
            kind = ("a character device" if stat.S_ISCHR(info.st_mode) else "a block device"
                    if stat.S_ISBLK(info.st_mode) else "a FIFO" if stat.S_ISFIFO(info.st_mode)
                    else "a socket" if stat.S_ISSOCK(info.st_mode) else "not a regular file")
            raise UnsafeFileError(f"{label}: is {kind}; only regular files are read")
        if info.st_size > limit:
            raise UnsafeFileError(f"{label}: {info.st_size} bytes is larger than the {limit}-byte limit")
        if not read:
            return b""
        chunks, total = [], 0
        while True:  # bounded even if the file grows while we read it
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise UnsafeFileError(f"{label}: grew past the {limit}-byte limit while being read")
        return b"".join(chunks)
    except OSError as e:
        raise UnsafeFileError(f"{label}: cannot read: {e.strerror or e}") from None
    finally:
        os.close(fd)
