"""The results file: one JSON record per line of ``<out>/results.jsonl``, appended, resumable.

Why it looks like this:
- Each record is written with a single ``os.write`` on an ``O_APPEND`` descriptor followed
  by ``fsync``, and nothing ever rewrites earlier lines. A crash or a kill can still cut
  the line being written (Linux may stop a write of more than a page part-way on SIGKILL;
  records are kept to a few KiB, see ``MAX_TEXT_CHARS`` in launch/sweep.py), so at worst the
  *last* line is torn: ``load_results`` skips it with a warning, the next append starts on
  a new line, and resume runs that cell again. Every reader warns with file and line for
  each line it skips and each value it cannot use (``LoadedResults.warnings``).
- Only the launcher's parent process writes, so lines from parallel cells never interleave.
- Every record carries ``schema``; a file written by a harness with another schema is
  refused with one clear line instead of being half-understood.
- ``environment()`` describes the software (and, filled in by the cell process, the device)
  a record was measured on; ``fingerprint()`` hashes the parts that change the numbers,
  so a report or a gate can tell comparable records from others.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from .record import SCHEMA_VERSION  # defined with the record
from .values import finite_or_null
from ..errors import UserError

RESULTS_FILE = "results.jsonl"

STATUSES = ("ok", "oom", "error", "timeout")
# Statuses that a resume re-runs only when asked (--retry-failed): an error or a timeout may
# be transient (a bug since fixed, a busy machine); "ok" and "oom" are results.
RETRYABLE_STATUSES = ("error", "timeout")

# The environment fields that can change measured numbers. Not the git commit (a docs
# change must not make old baselines incomparable) and not the hostname. ``device_class``
# is the GPU model for CUDA measurements but only "cpu" / "fake cpu" / "fake cuda" otherwise:
# the CPU model changes step times, never the bytes and FLOPs the trackers count.
FINGERPRINT_FIELDS = (
    "torch",
    "transformers",
    "peft",
    "device_class",
    "cuda",
    "PYTORCH_CUDA_ALLOC_CONF",
)


class ResultsError(UserError):
    """A results file this harness cannot use (incompatible schema, not JSON records)."""


class DataWarning(UserWarning):
    """A line of a results file skipped, or a value in it not usable (file and line in the
    message). The CLI prints each as ``lamda-bench: warning: ...`` and counts them."""


# ---- environment ------------------------------------------------------------------------


def _dist_version(name: str) -> str | None:
    # importlib.metadata: versions without importing torch (the launcher parent stays light).
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def git_commit(directory: str | Path | None = None) -> tuple[str | None, bool | None]:
    """(commit sha, dirty?) of the checkout holding ``directory``; (None, None) outside git."""
    cwd = Path(directory) if directory else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        if sha.returncode != 0:
            return None, None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
        )
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
        return sha.stdout.strip(), dirty
    except (OSError, subprocess.SubprocessError):
        return None, None


def environment(
    device_name: str | None = None,
    driver: str | None = None,
    cuda: str | None = None,
    device_class: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The software environment of this process, plus the device fields the caller knows.

    ``device_class`` (default: ``device_name``) is what the fingerprint keys on; see
    ``FINGERPRINT_FIELDS``.

    The launcher parent never touches CUDA, so ``device_name``/``driver``/``cuda`` come from
    the cell process (which knows which device it ran on). ``extra`` keys are added as is.
    The result includes its own ``fingerprint``.
    """
    from .. import __version__

    commit, dirty = git_commit()
    env: dict[str, Any] = {
        "torch": _dist_version("torch"),
        "transformers": _dist_version("transformers"),
        "peft": _dist_version("peft"),
        "python": platform.python_version(),
        "harness": __version__,
        "schema": SCHEMA_VERSION,
        "git_commit": commit,
        "git_dirty": dirty,
        "platform": platform.platform(),  # OS and architecture; no hostname
        "device_name": device_name,
        "driver": driver,
        "cuda": cuda,
        "PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
        "device_class": device_class if device_class is not None else device_name,
    }
    env.update(extra)
    env["fingerprint"] = fingerprint(env)
    return env


# What a baseline or a comparison stores next to the hash, so a drift can be named: the
# hashed fields plus the Python version (shown, not hashed: it has not changed a byte yet).
ENV_FIELDS = FINGERPRINT_FIELDS + ("python",)


def env_fields(env: dict[str, Any]) -> dict[str, Any]:
    """The named environment fields of a record's ``env`` (``ENV_FIELDS``), in a fixed order."""
    return {k: env.get(k) for k in ENV_FIELDS}


def env_drift(before: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``[(field, before, after)]`` for each ``ENV_FIELDS`` entry that differs; fields absent
    from ``before`` (a baseline written before fields were stored) are not compared."""
    return [(k, before.get(k), after.get(k)) for k in ENV_FIELDS
            if k in before and before.get(k) != after.get(k)]


def describe_drift(drift: list[tuple[str, Any, Any]]) -> str:
    """``transformers 5.23.0 -> 5.24.0, device_class cpu -> fake cpu``."""
    return ", ".join(f"{k} {a} -> {b}" for k, a, b in drift)


def fingerprint(env: dict[str, Any]) -> str:
    """Short hash of the fields that change measured numbers (see ``FINGERPRINT_FIELDS``)."""
    picked = {k: env.get(k) for k in FINGERPRINT_FIELDS}
    blob = json.dumps(picked, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---- writing ----------------------------------------------------------------------------


def results_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / RESULTS_FILE


def encode_record(record: dict[str, Any]) -> bytes:
    """One line of JSON, newline-terminated. Sets ``schema`` if the record lacks it."""
    record = dict(record)
    schema = record.setdefault("schema", SCHEMA_VERSION)
    if schema != SCHEMA_VERSION:
        raise ResultsError(
            f"record {record.get('id')!r} has schema {schema!r}; this harness writes {SCHEMA_VERSION}"
        )
    # Standard JSON only: NaN/infinity become null, listed in nonfinite_fields (results/values.py).
    line = json.dumps(finite_or_null(record), separators=(",", ":"), sort_keys=False, default=str,
                      allow_nan=False)
    if "\n" in line:  # json.dumps escapes newlines inside strings; belt and braces
        raise ResultsError(f"record {record.get('id')!r} does not encode to one line")
    return (line + "\n").encode("utf-8")


def append_record(path: str | Path, record: dict[str, Any]) -> None:
    """Append one record as one complete line: a single write on an O_APPEND fd, then fsync.

    If an earlier writer was killed mid-line (the file does not end with a newline), a
    newline is written first, so the torn fragment stays a separate, skippable line and
    never corrupts this record.
    """
    data = encode_record(record)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and _last_byte(path, size) != b"\n":
            data = b"\n" + data
        written = os.write(fd, data)
        if written != len(data):  # only on a full disk or similar; say so, do not hide it
            raise OSError(f"{path}: short write ({written} of {len(data)} bytes)")
        os.fsync(fd)
    finally:
        os.close(fd)


def _last_byte(path: Path, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(size - 1)
        return f.read(1)


# ---- reading ----------------------------------------------------------------------------


@dataclass
class LoadedResults:
    """Records in file order, plus what was skipped or repaired on the way, by line number.

    ``skipped``: (line, reason) of each line that gave no record (a torn write, bytes that
    are not UTF-8 or not JSON, a file of NUL bytes, a record without an ``id``).
    ``repaired``: (line, problem) of each value set to null because a reader cannot compute
    with it (``results.values.check_values``); the record itself is kept.
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    repaired: list[tuple[int, str]] = field(default_factory=list)

    @property
    def skipped_lines(self) -> list[int]:
        return [line for line, _ in self.skipped]

    def warn(self, path: str | Path) -> "LoadedResults":
        """Issue each of ``warnings(path)`` as a ``DataWarning``; returns self."""
        import warnings

        for text in self.warnings(path):
            warnings.warn(text, DataWarning, stacklevel=2)
        return self

    def warnings(self, path: str | Path) -> list[str]:
        """One line per problem (file and line number first), then a count when any line was
        skipped."""
        out = [f"{path}: line {n}: {why}; skipped" for n, why in self.skipped]
        out += [f"{path}: line {n}: {problem}" for n, problem in self.repaired]
        if self.skipped:
            n = len(self.skipped)
            out.append(f"{path}: {n} line{'s' if n > 1 else ''} skipped, {len(self.records)} records read")
        return out


def _parse_line(raw: bytes, is_last: bool) -> tuple[Any, str | None]:
    """(the parsed JSON value, None), or (None, why this line is not a record). A line that
    stops while its JSON text is still open is a write cut short (a kill mid-write);
    anything else is garbage."""
    if not raw.strip(b"\x00"):
        return None, f"{len(raw)} NUL bytes and nothing else (typical of a write lost when a machine crashed)"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, f"not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); not a record"
    try:
        return json.loads(text), None
    except json.JSONDecodeError as e:
        open_at_end = e.pos >= len(text.rstrip()) or e.msg.startswith("Unterminated string")
        if open_at_end and text.lstrip().startswith("{"):
            if is_last:
                return None, "incomplete record on the last line (a run was killed while writing it; its cell runs again)"
            return None, "incomplete record (a run was killed while writing it)"
        return None, f"not a JSON record ({e.msg} at column {e.colno})"


def load_results(path: str | Path) -> LoadedResults:
    """Parse a results file. A line that gives no record is skipped and listed with the
    reason, a value no reader can compute with is nulled and listed (``LoadedResults``); a
    line that is JSON but not an object, or a record from another schema version, raises
    ``ResultsError`` (not a results file this harness can read). A missing file is an empty
    result (nothing has run yet)."""
    from .values import check_values

    path = Path(path)
    loaded = LoadedResults()
    if not path.exists():
        return loaded
    with open(path, "rb") as f:
        data = f.read()
    raw_lines = data.split(b"\n")
    last = max((i for i, raw in enumerate(raw_lines, start=1) if raw.strip()), default=0)
    for lineno, raw in enumerate(raw_lines, start=1):
        if not raw.strip():
            continue
        record, why = _parse_line(raw, is_last=lineno == last and not data.endswith(b"\n"))
        if why is not None:
            loaded.skipped.append((lineno, why))
            continue
        if not isinstance(record, dict):
            raise ResultsError(f"{path}: line {lineno}: not a JSON object; is this a lamda-bench results file?")
        schema = record.get("schema")
        if schema != SCHEMA_VERSION:
            raise ResultsError(
                f"{path}: line {lineno}: schema: {schema!r} was written by an incompatible harness "
                f"version (this one reads schema {SCHEMA_VERSION}); use another --out directory"
            )
        if not isinstance(record.get("id"), str) or not record["id"]:
            what = "no id" if "id" not in record else f"id {record['id']!r}, not a cell id"
            loaded.skipped.append((lineno, f"record with {what} (cannot be matched to a cell)"))
            continue
        loaded.repaired += [(lineno, problem) for problem in check_values(record)]
        loaded.records.append(record)
    return loaded


def load_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a results file (torn lines skipped; see ``load_results`` for which)."""
    return load_results(path).records


def latest_by_id(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """id -> the last record written for it (a retried cell supersedes its failed attempt)."""
    out: dict[str, dict[str, Any]] = {}
    for rec in records:
        if "id" in rec:
            out[rec["id"]] = rec
    return out


def completed_ids(path: str | Path, retry_failed: bool = False) -> set[str]:
    """Ids a resumed run skips: every final status, or only ok/oom when ``retry_failed``."""
    return completed_ids_of(load_records(path), retry_failed)


def completed_ids_of(records: Iterable[dict[str, Any]], retry_failed: bool = False) -> set[str]:
    """``completed_ids`` of records already loaded."""
    done = set()
    for cell_id, rec in latest_by_id(records).items():
        status = rec.get("status")
        if status not in STATUSES:
            continue
        if retry_failed and status in RETRYABLE_STATUSES:
            continue
        done.add(cell_id)
    return done
