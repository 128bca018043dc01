"""Memory regression gate: compare a results directory with a committed baseline file.

``lamda-bench check DIR --baseline FILE [--update-baseline]`` calls ``check_cli``.

Exit codes (stable; scripts and CI rely on them):

- ``0`` PASS: every baseline cell was run and no gated metric moved beyond its tolerance in
  the bad direction (improvements pass; they are listed so the baseline can be refreshed).
- ``1`` REGRESSION: a gated metric got worse beyond its tolerance, a gated metric the
  baseline has is missing now, or a baselined cell did not finish (status != ok).
- ``2`` USAGE: bad input (no results directory/file, unreadable or malformed baseline,
  invalid tolerance), or nothing to write with ``--update-baseline``.
- ``3`` MISSING BASELINE: the baseline file does not exist, a result cell has no baseline
  entry, or a baseline cell has no result (the gate cannot vouch for it).
- ``4`` ENVIRONMENT MISMATCH: a cell's environment fingerprint (``record.env.fingerprint``:
  torch/transformers/peft versions, device, CUDA, allocator config) differs from the
  baseline's; its numbers are not compared, since they may differ for reasons other than
  the code. Refresh the baseline on the new environment on purpose.

When several apply, the first in this order wins: 2, 1, 4, 3, 0 (a real regression is
never hidden behind a bookkeeping problem).

The baseline file (JSON) holds, per cell id, the gated metrics, the mode and the
fingerprint, plus the gate's rules, so a reviewer sees them in the diff::

    {"format": "lamda-bench-baseline", "version": 1,
     "tolerances": {"estimate": {"rel": 0.0, "abs": 1024}, "measure": {"rel": 0.02, "abs": 16384}},
     "metrics": {"memory.peak": {"direction": "lower"},
                 "params.trainable": {"direction": "lower", "rel": 0.0, "abs": 0}, ...},
     "cells": {"<id>": {"method": "lora", "mode": "estimate", "fingerprint": "...",
                        "metrics": {"memory.peak": 123456, ...}}}}

A metric's allowed change is ``max(rel * |baseline|, abs)`` (``abs`` in the metric's own
unit: bytes for memory). Tolerances come from ``tolerances[mode]``, overridden by the
metric's ``rel``/``abs``, overridden by the metric's ``estimate``/``measure`` entries.
Estimate-mode byte counts come from fake tensors and are deterministic, hence the tight
default (1 KiB); measured figures get 2% or 16 KiB (the trackers' counts repeat exactly on
CPU; kernels may differ between runs on GPU), and the CUDA allocator's peaks 5% or 2 MiB
(allocated) / 20 MiB (reserved).
``--update-baseline`` rewrites the cells from the current ok records (atomically) and keeps
the file's tolerances and metric rules.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from tabulate import tabulate

from .report.records import ReportError, get, load_dir, mode
from .report.units import fmt_bytes, fmt_count
from .results import ResultsError

EXIT_PASS = 0
EXIT_REGRESSION = 1
EXIT_USAGE = 2
EXIT_MISSING_BASELINE = 3
EXIT_ENV_MISMATCH = 4

BASELINE_FORMAT = "lamda-bench-baseline"
BASELINE_VERSION = 1

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
    "memory.peak": _BYTES,
    "memory.peak_forward": _BYTES,
    "memory.peak_backward": _BYTES,
    "memory.peak_step": _BYTES,
    "memory.saved_activations": _BYTES,
    "memory.saved_activations_adapter": _BYTES,
    "memory.weights": _BYTES,
    "memory.grads": _BYTES,
    "memory.optimizer": _BYTES,
    # allocator counters: block rounding, cuBLAS/cuDNN workspaces and segment growth vary
    "memory.cuda_max_allocated": {"direction": "lower", "rel": 0.05, "abs": 2 << 20},
    "memory.cuda_max_reserved": {"direction": "lower", "rel": 0.05, "abs": 20 << 20},
    "params.trainable": _EXACT,  # parameter counts are exact in every mode
    "params.updates": _EXACT,
}
DIRECTIONS = ("lower", "higher")


class GateUsageError(ValueError):
    """Bad gate input; the message is one line."""


# ---- the baseline file ----------------------------------------------------------------------


def new_baseline() -> dict[str, Any]:
    return {"format": BASELINE_FORMAT, "version": BASELINE_VERSION,
            "tolerances": json.loads(json.dumps(DEFAULT_TOLERANCES)),
            "metrics": json.loads(json.dumps(DEFAULT_METRICS)), "cells": {}}


def read_baseline(path: Path) -> dict[str, Any]:
    """Parse and validate a baseline file (raises GateUsageError naming the problem)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise GateUsageError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict) or data.get("format") != BASELINE_FORMAT:
        raise GateUsageError(f"{path}: not a lamda-bench baseline (expected \"format\": \"{BASELINE_FORMAT}\")")
    if data.get("version") != BASELINE_VERSION:
        raise GateUsageError(f"{path}: baseline version {data.get('version')!r}; this gate reads {BASELINE_VERSION}")
    for key in ("tolerances", "metrics", "cells"):
        if not isinstance(data.get(key), dict):
            raise GateUsageError(f"{path}: baseline key {key!r} must be a JSON object")
    for name, rule in data["metrics"].items():
        if not isinstance(rule, dict) or rule.get("direction") not in DIRECTIONS:
            raise GateUsageError(f"{path}: metric {name!r} needs \"direction\": one of {list(DIRECTIONS)}")
        for m in ("estimate", "measure"):
            tolerance(data, name, m)  # validates every combination up front
    for cell_id, cell in data["cells"].items():
        if not isinstance(cell, dict) or not isinstance(cell.get("metrics"), dict):
            raise GateUsageError(f"{path}: cell {cell_id!r} needs a \"metrics\" object")
    return data


def tolerance(baseline: dict[str, Any], metric: str, cell_mode: str) -> tuple[float, float]:
    """(rel, abs) for ``metric`` in ``cell_mode``: defaults < metric < metric[mode]."""
    merged: dict[str, Any] = dict(DEFAULT_TOLERANCES.get(cell_mode, DEFAULT_TOLERANCES["measure"]))
    merged.update(baseline.get("tolerances", {}).get(cell_mode, {}))
    rule = baseline.get("metrics", {}).get(metric, {})
    merged.update({k: rule[k] for k in ("rel", "abs") if k in rule})
    merged.update(rule.get(cell_mode, {}) if isinstance(rule.get(cell_mode), dict) else {})
    rel, abs_ = merged.get("rel"), merged.get("abs")
    for name, value in (("rel", rel), ("abs", abs_)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise GateUsageError(f"tolerance {name!r} of metric {metric!r} ({cell_mode}) must be a number >= 0, got {value!r}")
    return float(rel), float(abs_)


def baseline_from_records(records: list[dict[str, Any]], previous: dict[str, Any] | None) -> dict[str, Any]:
    """A baseline of the ok records' gated metrics; rules kept from ``previous`` if given."""
    base = new_baseline()
    if previous is not None:
        base["tolerances"], base["metrics"] = previous["tolerances"], previous["metrics"]
    for rec in records:
        if rec.get("status") != "ok":
            continue
        metrics = {name: get(rec, name) for name in base["metrics"] if get(rec, name) is not None}
        base["cells"][rec["id"]] = {
            "method": get(rec, "cell.method"), "mode": mode(rec), "device": get(rec, "cell.device"),
            "fingerprint": get(rec, "env.fingerprint"), "metrics": metrics,
        }
    return base


def write_baseline_atomic(path: Path, baseline: dict[str, Any]) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over ``path``:
    a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(baseline, f, indent=2, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a baseline is an ordinary shared file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---- comparison -------------------------------------------------------------------------------


@dataclass
class Change:
    cell_id: str
    metric: str
    baseline: float | None
    now: float | None
    allowed: float | None
    rel: float | None
    abs: float | None
    verdict: str  # ok | regression | improved | missing now | new (not gated)


@dataclass
class GateResult:
    changes: list[Change] = field(default_factory=list)
    failed_cells: list[tuple[str, str]] = field(default_factory=list)  # (id, status: error)
    env_mismatch: list[tuple[str, Any, Any]] = field(default_factory=list)  # (id, baseline fp, now fp)
    missing_baseline: list[str] = field(default_factory=list)  # result cells absent from the baseline
    missing_result: list[str] = field(default_factory=list)  # baseline cells absent from the results

    @property
    def regressions(self) -> list[Change]:
        return [c for c in self.changes if c.verdict in ("regression", "missing now")]

    @property
    def exit_code(self) -> int:
        if self.regressions or self.failed_cells:
            return EXIT_REGRESSION
        if self.env_mismatch:
            return EXIT_ENV_MISMATCH
        if self.missing_baseline or self.missing_result:
            return EXIT_MISSING_BASELINE
        return EXIT_PASS


def _verdict(direction: str, base: float, now: float, allowed: float) -> str:
    worse = (now - base) if direction == "lower" else (base - now)
    if worse > allowed:
        return "regression"
    if worse < -allowed:
        return "improved"
    return "ok"


def check(records: list[dict[str, Any]], baseline: dict[str, Any]) -> GateResult:
    """Compare records (one per id) with a validated baseline; nothing printed."""
    result = GateResult()
    by_id = {rec["id"]: rec for rec in records}
    result.missing_result = [cid for cid in baseline["cells"] if cid not in by_id]
    for cell_id, rec in by_id.items():
        entry = baseline["cells"].get(cell_id)
        if entry is None:
            result.missing_baseline.append(cell_id)
            continue
        if rec.get("status") != "ok":
            result.failed_cells.append((cell_id, f"{rec.get('status')}: {rec.get('error')}"))
            continue
        now_fp = get(rec, "env.fingerprint")
        if now_fp != entry.get("fingerprint"):
            result.env_mismatch.append((cell_id, entry.get("fingerprint"), now_fp))
            continue
        cell_mode = mode(rec)
        for metric, rule in baseline["metrics"].items():
            base, now = entry["metrics"].get(metric), get(rec, metric)
            if base is None and now is None:
                continue
            rel, abs_ = tolerance(baseline, metric, cell_mode)
            if base is None:
                result.changes.append(Change(cell_id, metric, None, now, None, rel, abs_, "new (not gated)"))
            elif now is None:
                result.changes.append(Change(cell_id, metric, base, None, None, rel, abs_, "missing now"))
            else:
                allowed = max(rel * abs(base), abs_)
                verdict = _verdict(rule["direction"], base, now, allowed)
                result.changes.append(Change(cell_id, metric, base, now, allowed, rel, abs_, verdict))
    return result


# ---- printing -------------------------------------------------------------------------------


def _fmt(metric: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    if metric.startswith("memory."):
        return f"{fmt_bytes(value)} ({int(value):,})"
    return fmt_count(value) if metric.startswith("params.") else f"{value:g}"


def _fmt_delta(c: Change) -> str:
    if c.baseline is None or c.now is None:
        return "n/a"
    delta = c.now - c.baseline
    sign = "+" if delta >= 0 else "-"
    pct = f" ({delta / c.baseline:+.2%})" if c.baseline else ""
    size = fmt_bytes(abs(delta)) if c.metric.startswith("memory.") else f"{abs(delta):,.0f}"
    return f"{sign}{size}{pct}"


def _fmt_tolerance(c: Change) -> str:
    if c.allowed is None:
        return "n/a"
    unit = fmt_bytes if c.metric.startswith("memory.") else (lambda v: f"{v:,.0f}")
    return f"±{unit(c.allowed)} = max({c.rel:.1%}, {unit(c.abs)})"


def render(result: GateResult) -> str:
    lines = []
    shown = [c for c in result.changes if c.verdict != "ok" or c.baseline != c.now]
    if shown:
        rows = [[f"`{c.cell_id}`", c.metric, _fmt(c.metric, c.baseline), _fmt(c.metric, c.now),
                 _fmt_delta(c), _fmt_tolerance(c), c.verdict.upper() if c.verdict == "regression" else c.verdict]
                for c in shown]
        lines.append(tabulate(rows, headers=["cell", "metric", "baseline", "now", "delta", "tolerance", "verdict"],
                              tablefmt="github", disable_numparse=True))
    else:
        compared = len({c.cell_id for c in result.changes})
        lines.append(f"No gated metric changed ({compared} cells compared).")
    for cell_id, why in result.failed_cells:
        lines.append(f"REGRESSION: cell {cell_id} did not finish ({why})")
    for c in result.regressions:
        what = "is missing now" if c.verdict == "missing now" else f"rose beyond tolerance ({_fmt_delta(c)})"
        lines.append(f"REGRESSION: {c.metric} of cell {c.cell_id} {what}")
    for cell_id, base_fp, now_fp in result.env_mismatch:
        lines.append(f"ENVIRONMENT MISMATCH: cell {cell_id}: fingerprint {now_fp} now, {base_fp} in the baseline; not compared")
    for cell_id in result.missing_baseline:
        lines.append(f"MISSING BASELINE: cell {cell_id} has no baseline entry")
    for cell_id in result.missing_result:
        lines.append(f"MISSING RESULT: baseline cell {cell_id} has no result in this directory")
    improved = [c for c in result.changes if c.verdict == "improved"]
    if improved and result.exit_code == EXIT_PASS:
        lines.append(f"{len(improved)} metrics improved beyond tolerance; consider --update-baseline to lock them in.")
    names = {EXIT_PASS: "PASS", EXIT_REGRESSION: "REGRESSION", EXIT_MISSING_BASELINE: "MISSING BASELINE",
             EXIT_ENV_MISMATCH: "ENVIRONMENT MISMATCH"}
    lines.append(f"gate: {names[result.exit_code]} (exit {result.exit_code})")
    return "\n".join(lines)


# ---- CLI entry ----------------------------------------------------------------------------------


def check_cli(results_dir: Path, baseline: Path, update_baseline: bool = False,
              *, stream: TextIO | None = None) -> int:
    """Run the gate (or rewrite the baseline) and print what changed; returns the exit code."""
    out = stream if stream is not None else sys.stdout
    baseline = Path(baseline)
    try:
        records = load_dir(results_dir)
        previous = read_baseline(baseline) if baseline.exists() else None
        if update_baseline:
            new = baseline_from_records(records, previous)
            if not new["cells"]:
                raise GateUsageError(f"{results_dir}: no ok record to make a baseline from")
            write_baseline_atomic(baseline, new)
            skipped = [r["id"] for r in records if r.get("status") != "ok"]
            print(f"wrote baseline {baseline}: {len(new['cells'])} cells"
                  + (f"; left out {len(skipped)} cells that did not finish: {', '.join(skipped)}" if skipped else ""),
                  file=out)
            return EXIT_PASS
        if previous is None:
            print(f"MISSING BASELINE: {baseline} does not exist "
                  f"(create it on purpose with --update-baseline)", file=out)
            print(f"gate: MISSING BASELINE (exit {EXIT_MISSING_BASELINE})", file=out)
            return EXIT_MISSING_BASELINE
        result = check(records, previous)
    except (GateUsageError, ReportError, ResultsError) as exc:
        print(f"usage error: {exc}", file=out)
        return EXIT_USAGE
    print(render(result), file=out)
    return result.exit_code
