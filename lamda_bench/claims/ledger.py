"""The claims ledger: run the claims suite and probes, then write claims.md from their records.

Layout of a claims results directory (default ``reports/claims``):

    results.jsonl          training-step records of suites/claims.toml (runner.run_cell)
    probes/results.jsonl   probe records (claims.probes.run_probe: timed SVDs, outputs at init)
    claims.md              one row per claim, then each claim's supporting figures

Both record sets come from the normal launcher (a spawned process per cell, resume by id).
Probes run after the suite and one at a time, so the SVD timings do not share the CPU with
other cells of this run. A second, optional results directory (``reports/gpu`` when it
exists) supplies GPU-measured peaks for claim 3.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..results.files import RESULTS_FILE, latest_by_id, load_results
from .probes import PROBE_SUITE, default_probes
from .verdicts import VERDICTS, ClaimRow, all_claims
from ..errors import UserError

REPO = Path(__file__).resolve().parents[2]
CLAIMS_SUITE = REPO / "suites" / "claims.toml"
DEFAULT_OUT = Path("reports") / "claims"
DEFAULT_GPU_DIR = Path("reports") / "gpu" / "measured"
PROBES_DIR = "probes"
CLAIMS_FILE = "claims.md"


class ClaimsError(UserError):
    """A claims directory that cannot be written from (one line)."""


def verify_cli(out_dir: Path = DEFAULT_OUT, jobs: int = 2, gpu_dir: Path | None = None, progress: bool = True) -> int:
    """Run the claims suite (``jobs`` at once) and the probes (one at a time) into ``out_dir``,
    resuming what is recorded there, then write ``out_dir/claims.md``. Exit code: 0 done,
    1 some cell or probe ended in error/timeout (claims.md is still written), 130 interrupted."""
    from ..launch.local import run_cells
    from ..suite.parse import load_suite

    out_dir = Path(out_dir)
    check_paths(out_dir, gpu_dir)
    suite = load_suite(CLAIMS_SUITE)
    summaries = [run_cells(list(suite.cells), out_dir, suite=suite.name, jobs=jobs, progress=progress)]
    if not summaries[0].interrupted:
        summaries.append(run_cells(default_probes(), out_dir / PROBES_DIR, suite=PROBE_SUITE,
                                   runner="lamda_bench.claims.probes:run_probe", jobs=1, progress=progress))
    for s in summaries:
        for warning in s.warnings:
            print(f"lamda-bench: warning: {warning}", file=sys.stderr)
    if any(s.interrupted for s in summaries):
        print(f"lamda-bench: interrupted; `lamda-bench verify --out {out_dir}` resumes", file=sys.stderr)
        return 130
    path = write_claims(out_dir, gpu_dir=gpu_dir)
    print(f"claims ledger written to {path}")
    failed = _failed(out_dir) + _failed(out_dir / PROBES_DIR)
    for rec in failed:
        print(f"lamda-bench: {rec.get('status')}: {rec.get('id')}: {rec.get('error')}", file=sys.stderr)
    return 1 if failed else 0


def check_paths(out_dir: Path, gpu_dir: Path | None) -> None:
    """Every path ``verify`` will read or write, checked before its first cell (one line, exit 2):
    an explicit ``--gpu`` must hold GPU results; ``--out``, its probes folder and claims.md must
    be writable."""
    from ..paths import results_dir, writable_dir, writable_file

    if gpu_dir is not None:
        results_dir(Path(gpu_dir), "--gpu")
    writable_dir(out_dir, "--out")
    writable_dir(out_dir / PROBES_DIR, "--out")
    writable_file(out_dir / CLAIMS_FILE, "--out")


def write_claims(results_dir: Path, gpu_dir: Path | None = None) -> Path:
    """``results_dir/claims.md`` from the records already there (and ``gpu_dir``'s, when given
    or when ``reports/gpu`` exists next to the default layout). Returns the path written."""
    results_dir = Path(results_dir)
    if not (results_dir / RESULTS_FILE).is_file():
        raise ClaimsError(f"{results_dir / RESULTS_FILE}: no results (run `lamda-bench verify --out {results_dir}` first)")
    records = load_dir_records(results_dir) + load_dir_records(results_dir / PROBES_DIR)
    if gpu_dir is None and DEFAULT_GPU_DIR.is_dir() and Path(results_dir).resolve() != DEFAULT_GPU_DIR.resolve():
        gpu_dir = DEFAULT_GPU_DIR
    gpu_records = load_dir_records(gpu_dir) if gpu_dir is not None else []
    rows = all_claims(records, gpu_records)
    path = results_dir / CLAIMS_FILE
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(render(rows, records, results_dir, gpu_dir if gpu_records else None))
    tmp.replace(path)
    return path


def load_dir_records(directory: Path | None) -> list[dict]:
    """Latest record per id of ``directory/results.jsonl``; [] where there is none."""
    if directory is None:
        return []
    path = Path(directory) / RESULTS_FILE
    if not path.is_file():
        return []
    return list(latest_by_id(load_results(path).warn(path).records).values())


def _failed(directory: Path) -> list[dict]:
    return [r for r in load_dir_records(directory) if r.get("status") in ("error", "timeout")]


# ---- markdown -----------------------------------------------------------------------------------

def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def render(rows: list[ClaimRow], records: list[dict], results_dir: Path, gpu_dir: Path | None) -> str:
    statuses: dict[str, int] = {}
    for r in records:
        statuses[r.get("status", "?")] = statuses.get(r.get("status", "?"), 0) + 1
    env = next((r.get("env") for r in records if r.get("status") == "ok" and r.get("env")), {}) or {}
    counts = {v: sum(1 for row in rows if row.verdict == v) for v in VERDICTS}
    lines = [
        "# Claims ledger",
        "",
        f"Written by `lamda-bench verify` from {len(records)} records in `{results_dir}` "
        f"({', '.join(f'{n} {s}' for s, n in sorted(statuses.items()))})"
        + (f" and GPU records in `{gpu_dir}`" if gpu_dir else "")
        + f"; harness commit {env.get('git_commit') or 'unknown'}, torch {env.get('torch') or '?'}, "
        f"transformers {env.get('transformers') or '?'}, peft {env.get('peft') or '?'}.",
        "Every figure below comes from those records or from harness functions run by `verify`; the reasons are "
        "templates filled with them. Full-size figures are estimates on fake tensors unless a row says measured.",
        "",
        "Verdicts: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n) + ".",
        "",
        "| # | claim | source | setting | predicted | measured | verdict | reason |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_cell(x) for x in (row.key, row.claim, row.source, row.setting, row.predicted,
                                                          row.measured, f"**{row.verdict}**", row.reason)) + " |")
    for row in rows:
        lines += ["", f"## {row.key}. {row.claim}", "", f"Verdict: **{row.verdict}**. {row.reason}.", ""]
        lines += row.details
    return "\n".join(lines) + "\n"
