"""The memory gate's baseline file: its format, strict validation, and atomic writing.

A baseline (JSON) holds, per cell id, the gated metrics, the mode and the environment the
numbers were recorded in (the fingerprint hash and the fields behind it, so a drift can be
named), plus the gate's rules, so a reviewer sees all of them in the diff::

    {"format": "lamda-bench-baseline", "version": 1,
     "tolerances": {"estimate": {"rel": 0.0, "abs": 1024}, "measure": {"rel": 0.02, "abs": 16384}},
     "metrics": {"memory.peak": {"direction": "lower"},
                 "params.trainable": {"direction": "lower", "rel": 0.0, "abs": 0}, ...},
     "cells": {"<id>": {"method": "lora", "mode": "estimate", "device": "cpu",
                        "fingerprint": "...", "env": {"torch": "2.13.0+cpu", ...},
                        "metrics": {"memory.peak": 123456, ...}}}}

Validation is as strict as a suite's: a baseline that would let the gate pass while checking
nothing (no metric rules, a null or non-finite value, an infinite or non-numeric tolerance)
is refused with one line naming the key.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .record import CELL, ENV, MEMORY, PARAMS, run_device
from .values import is_number  # a finite int or float, not a bool: all a gated figure may be
from ..report.records import get, mode
from .files import env_fields
from ..errors import UserError

BASELINE_FORMAT = "lamda-bench-baseline"
BASELINE_VERSION = 1
MODES = ("estimate", "measure")
DIRECTIONS = ("lower", "higher")

DEFAULT_TOLERANCES: dict[str, dict[str, float]] = {
    "estimate": {"rel": 0.0, "abs": 1024},
    # The live-bytes and saved-tensor trackers count storage sizes: on a rerun of the CI suite
    # on CPU they came out byte-identical, so "measured" here is tight too, with headroom
    # for nondeterministic kernels; the CUDA allocator's own counters get their own rules.
    "measure": {"rel": 0.02, "abs": 16 << 10},
}
_BYTES = {"direction": "lower"}
_EXACT = {"direction": "lower", "rel": 0.0, "abs": 0}
DEFAULT_METRICS: dict[str, dict[str, Any]] = {
    MEMORY.peak: _BYTES,
    MEMORY.peak_forward: _BYTES,
    MEMORY.peak_backward: _BYTES,
    MEMORY.peak_step: _BYTES,
    MEMORY.saved_activations: _BYTES,
    MEMORY.saved_activations_adapter: _BYTES,
    MEMORY.weights: _BYTES,
    MEMORY.grads: _BYTES,
    MEMORY.optimizer: _BYTES,
    # allocator counters: block rounding, cuBLAS/cuDNN workspaces and segment growth vary
    MEMORY.cuda_max_allocated: {"direction": "lower", "rel": 0.05, "abs": 2 << 20},
    MEMORY.cuda_max_reserved: {"direction": "lower", "rel": 0.05, "abs": 20 << 20},
    PARAMS.trainable: _EXACT,  # parameter counts are exact in every mode
    PARAMS.updates: _EXACT,
}


class GateUsageError(UserError):
    """Bad gate input; the message is one line."""


def new_baseline() -> dict[str, Any]:
    return {"format": BASELINE_FORMAT, "version": BASELINE_VERSION,
            "tolerances": json.loads(json.dumps(DEFAULT_TOLERANCES)),
            "metrics": json.loads(json.dumps(DEFAULT_METRICS)), "cells": {}}


def is_negative_count(metric: str, value: float) -> bool:
    """Bytes and parameter counts are never negative: such a figure is corrupt, not an improvement."""
    return value < 0 and metric.split(".")[0] in ("memory", "params")


def _refuse_constant(name: str) -> Any:
    raise GateUsageError(f"non-standard JSON constant {name} (a baseline holds finite numbers only)")


def read_baseline(path: Path) -> dict[str, Any]:
    """Parse and validate a baseline file (raises GateUsageError naming the problem)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"), parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise GateUsageError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise GateUsageError(f"{path}: not UTF-8 text") from None
    except GateUsageError as exc:
        raise GateUsageError(f"{path}: {exc}") from None
    except OSError as exc:
        raise GateUsageError(f"{path}: cannot read ({exc.strerror})") from None
    validate(data, str(path))
    return data


def validate(data: Any, where: str) -> None:
    if not isinstance(data, dict) or data.get("format") != BASELINE_FORMAT:
        raise GateUsageError(f"{where}: not a lamda-bench baseline (expected \"format\": \"{BASELINE_FORMAT}\")")
    if data.get("version") != BASELINE_VERSION:
        raise GateUsageError(f"{where}: baseline version {data.get('version')!r}; this gate reads {BASELINE_VERSION}")
    for key in ("tolerances", "metrics", "cells"):
        if not isinstance(data.get(key), dict):
            raise GateUsageError(f"{where}: baseline key {key!r} must be a JSON object")
    for cell_mode, tol in data["tolerances"].items():
        if cell_mode not in MODES or not isinstance(tol, dict):
            raise GateUsageError(f"{where}: tolerances.{cell_mode} must be an object under one of {list(MODES)}")
    if not data["metrics"]:
        raise GateUsageError(f"{where}: \"metrics\" is empty: the gate would check nothing")
    for name, rule in data["metrics"].items():
        if not isinstance(rule, dict) or rule.get("direction") not in DIRECTIONS:
            raise GateUsageError(f"{where}: metric {name!r} needs \"direction\": one of {list(DIRECTIONS)}")
        for cell_mode in MODES:
            if cell_mode in rule and not isinstance(rule[cell_mode], dict):
                raise GateUsageError(f"{where}: metrics.{name}.{cell_mode} must be an object of rel/abs")
            tolerance(data, name, cell_mode)  # validates every combination up front
    for cell_id, cell in data["cells"].items():
        if not isinstance(cell, dict) or not isinstance(cell.get("metrics"), dict):
            raise GateUsageError(f"{where}: cell {cell_id!r} needs a \"metrics\" object")
        if cell.get("env") is not None and not isinstance(cell["env"], dict):
            raise GateUsageError(f"{where}: cell {cell_id!r}: \"env\" must be an object of environment fields")
        for name, value in cell["metrics"].items():
            if not is_number(value):
                raise GateUsageError(f"{where}: cell {cell_id!r} metric {name!r} is {value!r}, not a finite number")
            if is_negative_count(name, value):
                raise GateUsageError(f"{where}: cell {cell_id!r} metric {name!r} is negative ({value})")


def tolerance(baseline: dict[str, Any], metric: str, cell_mode: str) -> tuple[float, float]:
    """(rel, abs) for ``metric`` in ``cell_mode``: defaults < tolerances[mode] < metric < metric[mode]."""
    merged: dict[str, Any] = dict(DEFAULT_TOLERANCES.get(cell_mode, DEFAULT_TOLERANCES["measure"]))
    merged.update(baseline.get("tolerances", {}).get(cell_mode, {}))
    rule = baseline.get("metrics", {}).get(metric, {})
    merged.update({k: rule[k] for k in ("rel", "abs") if k in rule})
    merged.update(rule.get(cell_mode, {}) if isinstance(rule.get(cell_mode), dict) else {})
    rel, abs_ = merged.get("rel"), merged.get("abs")
    for name, value in (("rel", rel), ("abs", abs_)):
        if not is_number(value) or value < 0:
            raise GateUsageError(f"tolerance {name!r} of metric {metric!r} ({cell_mode}) must be a finite number >= 0, "
                                 f"got {value!r}")
    return float(rel), float(abs_)


def cell_entry(record: dict[str, Any], metric_names: list[str]) -> dict[str, Any]:
    """What the baseline keeps of one ok record: its gated metrics and where they came from."""
    metrics = {name: get(record, name) for name in metric_names if get(record, name) is not None}
    return {"method": get(record, CELL.method), "mode": mode(record), "device": run_device(record),
            "fingerprint": get(record, ENV.fingerprint), "env": env_fields(record.get("env") or {}),
            "metrics": metrics}


def write_baseline_atomic(path: Path, baseline: dict[str, Any]) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over ``path``:
    a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(baseline, f, indent=2, sort_keys=False, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a baseline is an ordinary shared file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
