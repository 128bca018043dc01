"""Memory regression gate: compare a results directory with a committed baseline file.

``lamda-bench check DIR --baseline FILE [--allow-env-drift] [--update-baseline
[--accept-regressions] [--drop-missing]]`` calls ``check_cli``. The baseline file's format
and validation live in ``baseline.py``.

Exit codes (stable; scripts and CI rely on them):

- ``0`` PASS: every baseline cell was run and no gated metric moved beyond its tolerance in
  the bad direction (improvements pass; they are listed so the baseline can be refreshed).
- ``1`` REGRESSION: a gated metric got worse beyond its tolerance, a gated metric the
  baseline has is missing now or is not a finite number, or a baselined cell did not finish
  (status != ok). With ``--update-baseline``: the baseline was not written because it would
  accept a regression or a failed cell.
- ``2`` USAGE: bad input (no results directory/file, unreadable or malformed baseline,
  invalid tolerance), or nothing to write with ``--update-baseline``.
- ``3`` MISSING BASELINE: the baseline file does not exist, a result cell has no baseline
  entry, or a baseline cell has no result (the gate cannot vouch for it). With
  ``--update-baseline``: not written because baseline cells would disappear.
- ``4`` ENVIRONMENT MISMATCH: a cell's environment fingerprint (``record.env.fingerprint``:
  torch/transformers/peft versions, device class, CUDA, allocator config) differs from the
  baseline's; the differing fields are named once (``transformers 5.23.0 -> 5.24.0``) and
  the cell's numbers are not compared, since they may differ for reasons other than the
  code. ``--allow-env-drift`` compares them anyway and exits by the comparison, so an
  upgrade can be judged in one run.

When several apply, the first in this order wins: 2, 1, 4, 3, 0 (a real regression is
never hidden behind a bookkeeping problem).

A metric's allowed change is ``max(rel * |baseline|, abs)`` (``abs`` in the metric's own
unit: bytes for memory). Tolerances come from ``tolerances[mode]``, overridden by the
metric's ``rel``/``abs``, overridden by the metric's ``estimate``/``measure`` entries.
Estimate-mode byte counts come from fake tensors and are deterministic, hence the tight
default (1 KiB); measured figures get 2% or 16 KiB (the trackers' counts repeat exactly on
CPU; kernels may differ between runs on GPU), and the CUDA allocator's peaks 5% or 2 MiB
(allocated) / 20 MiB (reserved).

``--update-baseline`` rewrites the cells from the current ok records (atomically), keeps the
file's tolerances and metric rules, and prints what it accepted. It never hides a
regression: it refuses, leaving the file untouched, when a gated metric regressed against
the file (``--accept-regressions`` to take it), or when a cell is not ok or a baseline cell
has no result (``--drop-missing`` to leave those out). A changed environment is compared
across, as with ``--allow-env-drift``, and named.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from tabulate import tabulate

from .baseline import (BASELINE_FORMAT, DEFAULT_METRICS, DEFAULT_TOLERANCES, GateUsageError, cell_entry,
                       is_negative_count, is_number, new_baseline, read_baseline, tolerance, write_baseline_atomic)
from .record import ENV
from ..report.records import ReportError, get, load_dir, mode
from ..report.units import fmt_bytes, fmt_count
from .files import ResultsError, describe_drift, env_drift, env_fields

__all__ = ["BASELINE_FORMAT", "DEFAULT_METRICS", "DEFAULT_TOLERANCES", "GateUsageError", "check", "check_cli",
           "render", "rerecord_baseline"]

EXIT_PASS = 0
EXIT_REGRESSION = 1
EXIT_USAGE = 2
EXIT_MISSING_BASELINE = 3
EXIT_ENV_MISMATCH = 4


# ---- comparison -------------------------------------------------------------------------------


@dataclass
class Change:
    cell_id: str
    metric: str
    baseline: float | None
    now: Any
    allowed: float | None
    rel: float | None
    abs: float | None
    verdict: str  # ok | regression | improved | missing now | invalid now | new (not gated)


@dataclass
class EnvMismatch:
    cell_id: str
    baseline_fingerprint: Any
    now_fingerprint: Any
    drift: list[tuple[str, Any, Any]]  # the named fields that differ
    baseline_has_fields: bool  # False for a baseline written before fields were stored

    def describe(self) -> str:
        if self.drift:
            return describe_drift(self.drift)
        why = "" if self.baseline_has_fields else \
            " (the baseline stores no environment fields; re-record it to name them)"
        return f"fingerprint {self.now_fingerprint} now, {self.baseline_fingerprint} in the baseline{why}"


@dataclass
class GateResult:
    changes: list[Change] = field(default_factory=list)
    failed_cells: list[tuple[str, str]] = field(default_factory=list)  # (id, status: error)
    env_mismatch: list[EnvMismatch] = field(default_factory=list)
    env_drift_allowed: bool = False  # mismatched cells were compared anyway (--allow-env-drift)
    missing_baseline: list[str] = field(default_factory=list)  # result cells absent from the baseline
    missing_result: list[str] = field(default_factory=list)  # baseline cells absent from the results

    @property
    def regressions(self) -> list[Change]:
        return [c for c in self.changes if c.verdict in ("regression", "missing now", "invalid now")]

    @property
    def exit_code(self) -> int:
        if self.regressions or self.failed_cells:
            return EXIT_REGRESSION
        if self.env_mismatch and not self.env_drift_allowed:
            return EXIT_ENV_MISMATCH
        if self.missing_baseline or self.missing_result:
            return EXIT_MISSING_BASELINE
        return EXIT_PASS

    def drift_summary(self) -> list[tuple[str, int]]:
        """Each distinct drift once, with the number of cells it covers, most common first."""
        return Counter(m.describe() for m in self.env_mismatch).most_common()


def _verdict(direction: str, base: float, now: float, allowed: float) -> str:
    worse = (now - base) if direction == "lower" else (base - now)
    if worse > allowed:
        return "regression"
    if worse < -allowed:
        return "improved"
    return "ok"


def _valid_now(metric: str, value: Any) -> bool:
    return is_number(value) and not is_negative_count(metric, value)


def check(records: list[dict[str, Any]], baseline: dict[str, Any], allow_env_drift: bool = False) -> GateResult:
    """Compare records (one per id) with a validated baseline; nothing printed.

    A cell whose environment fingerprint differs from its baseline entry is listed in
    ``env_mismatch``; its metrics are compared only with ``allow_env_drift``."""
    result = GateResult(env_drift_allowed=allow_env_drift)
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
        now_fp = get(rec, ENV.fingerprint)
        if now_fp != entry.get("fingerprint"):
            drift = env_drift(entry.get("env") or {}, env_fields(rec.get("env") or {}))
            result.env_mismatch.append(EnvMismatch(cell_id, entry.get("fingerprint"), now_fp, drift,
                                                   bool(entry.get("env"))))
            if not allow_env_drift:
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
            elif not _valid_now(metric, now):
                result.changes.append(Change(cell_id, metric, base, now, None, rel, abs_, "invalid now"))
            else:
                allowed = max(rel * abs(base), abs_)
                verdict = _verdict(rule["direction"], base, now, allowed)
                result.changes.append(Change(cell_id, metric, base, now, allowed, rel, abs_, verdict))
    return result


# ---- printing -------------------------------------------------------------------------------


def _fmt(metric: str, value: Any) -> str:
    if value is None:
        return "n/a"
    if not is_number(value):
        return repr(value)
    if metric.startswith("memory."):
        return f"{fmt_bytes(value)} ({int(value):,})"
    return fmt_count(value) if metric.startswith("params.") else f"{value:g}"


def _fmt_delta(c: Change) -> str:
    if c.baseline is None or not is_number(c.now):
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


def _drift_lines(result: GateResult) -> list[str]:
    total = len(result.env_mismatch)
    if not total:
        return []
    label = "ENVIRONMENT DRIFT (compared anyway: --allow-env-drift)" if result.env_drift_allowed \
        else "ENVIRONMENT DRIFT"
    return [f"{label}: {what} ({n} of {total} mismatched cells)" for what, n in result.drift_summary()]


def render(result: GateResult) -> str:
    lines = _drift_lines(result)
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
        what = {"missing now": "is missing now",
                "invalid now": f"is {c.now!r} now, not a finite number >= 0"}.get(
            c.verdict, f"rose beyond tolerance ({_fmt_delta(c)})")
        lines.append(f"REGRESSION: {c.metric} of cell {c.cell_id} {what}")
    if not result.env_drift_allowed:
        for m in result.env_mismatch:
            lines.append(f"ENVIRONMENT MISMATCH: cell {m.cell_id}: {m.describe()}; not compared "
                         f"(--allow-env-drift compares across it)")
    for cell_id in result.missing_baseline:
        lines.append(f"MISSING BASELINE: cell {cell_id} has no baseline entry")
    for cell_id in result.missing_result:
        lines.append(f"MISSING RESULT: baseline cell {cell_id} has no result in this directory")
    improved = [c for c in result.changes if c.verdict == "improved"]
    if improved and result.exit_code == EXIT_PASS:
        lines.append(f"{len(improved)} metrics improved beyond tolerance; consider --update-baseline to lock them in.")
    names = {EXIT_PASS: "PASS", EXIT_REGRESSION: "REGRESSION", EXIT_MISSING_BASELINE: "MISSING BASELINE",
             EXIT_ENV_MISMATCH: "ENVIRONMENT MISMATCH"}
    drift = " across environment drift" if result.env_mismatch and result.env_drift_allowed else ""
    lines.append(f"gate: {names[result.exit_code]}{drift} (exit {result.exit_code})")
    return "\n".join(lines)


# ---- re-recording the baseline --------------------------------------------------------------


def rerecord_baseline(records: list[dict[str, Any]], path: Path, previous: dict[str, Any] | None, *,
                    accept_regressions: bool = False, drop_missing: bool = False,
                    out: TextIO = sys.stdout) -> int:
    """Re-record ``path`` from the ok records, refusing (file untouched) what would hide a
    regression; prints what it accepted or why it refused. Returns the exit code."""
    base = new_baseline()
    if previous is not None:
        base["tolerances"], base["metrics"] = previous["tolerances"], previous["metrics"]
    ok = [r for r in records if r.get("status") == "ok"]
    for rec in sorted(ok, key=lambda r: r["id"]):  # sorted: a re-recording diffs cell by cell
        base["cells"][rec["id"]] = cell_entry(rec, list(base["metrics"]))
    if not base["cells"]:
        raise GateUsageError("no ok record to make a baseline from")
    failed = [(r["id"], f"{r.get('status')}: {r.get('error')}") for r in records if r.get("status") != "ok"]
    result = check(ok, previous, allow_env_drift=True) if previous is not None else GateResult()
    missing = result.missing_result if previous is not None else []
    refusals = []
    if result.regressions and not accept_regressions:
        refusals.append((EXIT_REGRESSION, f"{len(result.regressions)} gated metrics regressed against {path} "
                                          f"(--accept-regressions to take them)"))
    if failed and not drop_missing:
        refusals.append((EXIT_REGRESSION, f"{len(failed)} cells did not finish: "
                                          + ", ".join(f"{cid} ({why})" for cid, why in failed)
                                          + " (--drop-missing to leave them out)"))
    if missing and not drop_missing:
        refusals.append((EXIT_MISSING_BASELINE, f"{len(missing)} baseline cells have no ok result and would "
                                                f"disappear: {', '.join(missing)} (--drop-missing to drop them)"))
    if refusals:
        if result.regressions or result.env_mismatch:
            print(render(result), file=out)
        for _, why in refusals:
            print(f"NOT WRITTEN: {why}", file=out)
        code = min(code for code, _ in refusals)
        print(f"gate: baseline {path} left untouched (exit {code})", file=out)
        return code
    for what, n in result.drift_summary():
        print(f"accepted environment drift: {what} ({n} cells)", file=out)
    for c in result.regressions:
        print(f"accepted regression: {c.metric} of cell {c.cell_id} ({_fmt_delta(c)})", file=out)
    for cid, why in failed:
        print(f"left out (did not finish): {cid} ({why})", file=out)
    for cid in missing:
        print(f"dropped (no result): {cid}", file=out)
    for cid in result.missing_baseline:
        print(f"added: {cid}", file=out)
    write_baseline_atomic(path, base)
    print(f"wrote baseline {path}: {len(base['cells'])} cells", file=out)
    return EXIT_PASS


# ---- CLI entry ----------------------------------------------------------------------------------


def check_cli(results_dir: Path, baseline: Path, update_baseline: bool = False, *,
              allow_env_drift: bool = False, accept_regressions: bool = False, drop_missing: bool = False,
              stream: TextIO | None = None) -> int:
    """Run the gate (or rewrite the baseline) and print what changed; returns the exit code."""
    out = stream if stream is not None else sys.stdout
    baseline = Path(baseline)
    try:
        records = load_dir(results_dir)
        previous = read_baseline(baseline) if baseline.exists() else None
        if update_baseline:
            return rerecord_baseline(records, baseline, previous, accept_regressions=accept_regressions,
                                     drop_missing=drop_missing, out=out)
        if previous is None:
            print(f"MISSING BASELINE: {baseline} does not exist "
                  f"(create it on purpose with --update-baseline)", file=out)
            print(f"gate: MISSING BASELINE (exit {EXIT_MISSING_BASELINE})", file=out)
            return EXIT_MISSING_BASELINE
        result = check(records, previous, allow_env_drift=allow_env_drift)
    except (GateUsageError, ReportError, ResultsError) as exc:
        print(f"usage error: {exc}", file=out)
        return EXIT_USAGE
    print(render(result), file=out)
    return result.exit_code
