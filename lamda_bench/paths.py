"""Path arguments checked before any work starts: one line, exit 2, nothing run.

Why: ``lamda-bench verify --gpu DIR`` with a DIR that did not exist ran the claims suite's 36
cells before noticing, and ``agreement --out`` into a directory ended in a traceback after the
work. Each verb checks every path it was given here, first; these checks read and create
nothing (``results.outdir.prepare_out_dir`` still creates and locks the output directory when
the run starts).
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError
from .results.files import RESULTS_FILE


class PathArgumentError(UserError):
    """A path argument that cannot serve (missing, the wrong kind, not writable); one line."""


def existing_dir(path: Path, flag: str) -> Path:
    """``path`` must be an existing directory."""
    if not path.exists():
        raise PathArgumentError(f"{path}: {flag}: no such directory")
    if not path.is_dir():
        raise PathArgumentError(f"{path}: {flag}: not a directory")
    return path


def results_dir(path: Path, flag: str) -> Path:
    """``path`` must be a directory holding a results file (``DIR/results.jsonl``)."""
    existing_dir(path, flag)
    if not (path / RESULTS_FILE).is_file():
        raise PathArgumentError(f"{path}: {flag}: no {RESULTS_FILE} in this directory")
    return path


def writable_dir(path: Path, flag: str) -> Path:
    """``path`` is a directory, or can be made one: its nearest existing ancestor is a writable
    directory. Nothing is created."""
    if path.exists():
        if not path.is_dir():
            raise PathArgumentError(f"{path}: {flag}: exists and is not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise PathArgumentError(f"{path}: {flag}: directory is not writable")
        return path
    _creatable(path, flag)
    return path


def writable_file(path: Path, flag: str) -> Path:
    """``path`` is a regular file that can be written, or can be created. Nothing is created."""
    if path.exists():
        if not path.is_file():
            raise PathArgumentError(f"{path}: {flag}: exists and is not a regular file")
        if not os.access(path, os.W_OK):
            raise PathArgumentError(f"{path}: {flag}: file is not writable")
        return path
    _creatable(path, flag)
    return path


def _creatable(path: Path, flag: str) -> None:
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise PathArgumentError(f"{path}: {flag}: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PathArgumentError(f"{path}: {flag}: cannot be created ({ancestor} is not writable)")
