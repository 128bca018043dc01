"""Certified depth extrapolation against the full trace (issue 28's targets): each scenario runs
as whole ``lamda-bench`` processes, extrapolated (A, the default) and ``--trace full`` (B) in
turn, A B A B, into fresh directories; prints each pair's walls, the median ratio A/B against
its target, and whether the two runs' records are equal in every params, memory, flops,
predicted and series field (they must be: a ratio over unequal answers means nothing).

    python tests/bench_extrapolation.py [--pairs 3] [--only 7b,70b,70b-sharded,fit,main]

Scenarios (targets from the issue):
- ``7b``: ``estimate`` LLaMA2-7B LoRA r16, batch 4 x 1024, bf16 (<= 0.5)
- ``70b``: ``estimate`` LLaMA2-70B LoRA r16, batch 1 x 1024 (<= 0.25)
- ``70b-sharded``: ``estimate`` LLaMA2-70B LaMDA r16 under FSDP2 at 8 ranks (<= 0.25)
- ``fit``: ``fit --workload llama2-7b --method lora lamda --budget 24GiB --seq 1024`` (<= 0.5)
- ``main``: ``run suites/llama7b.toml --jobs 2`` (<= 0.5; about 8 minutes a pair)

Exit status 1 when a pair's records differ or a run fails; a missed ratio is printed, not
judged (it depends on the machine and its load: quote the load beside it). Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMPARED = ("params", "memory", "flops", "predicted", "series")
SCENARIOS = {
    "7b": (["estimate", "--workload", "llama2-7b", "--method", "lora", "--r", "16", "--batch", "4", "--seq", "1024",
            "--dtype", "bf16"], 0.5),
    "70b": (["estimate", "--workload", "llama2-70b", "--method", "lora", "--r", "16", "--batch", "1", "--seq", "1024",
             "--dtype", "bf16"], 0.25),
    "70b-sharded": (["estimate", "--workload", "llama2-70b", "--method", "lamda", "--r", "16", "--batch", "1",
                     "--seq", "1024", "--dtype", "bf16", "--steps", "3", "--warmup", "1", "--parallel", "fsdp2",
                     "--world-size", "8", "--set", "svd_niter=4"], 0.25),
    "fit": (["fit", "--workload", "llama2-7b", "--method", "lora", "lamda", "--budget", "24GiB", "--seq", "1024"], 0.5),
    "main": (["run", "suites/llama7b.toml", "--jobs", "2"], 0.5),
}


def records(out: Path) -> dict[str, dict]:
    """The records under ``out`` by id (fit keeps its probes' records one level down)."""
    found = {}
    for path in sorted(out.rglob("results.jsonl")):
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            found[rec["id"]] = {k: rec.get(k) for k in COMPARED + ("status",)}
            (found[rec["id"]]["memory"] or {}).pop("host_rss_peak", None)  # a real CPU cell's process RSS: noise
    return found


def timed(args: list[str], trace: str, out: Path) -> float:
    cmd = [sys.executable, "-m", "lamda_bench", *args, "--trace", trace, "--out", str(out), "--no-progress"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if done.returncode != 0 and not (args[0] == "fit" and done.returncode == 1):  # fit: 1 = does not fit
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--only", default="7b,70b,70b-sharded,fit")
    args = ap.parse_args()
    unknown = set(args.only.split(",")) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"--only: unknown scenario(s) {sorted(unknown)}; known: {', '.join(SCENARIOS)}")
    bad = False
    for name in args.only.split(","):
        cli, target = SCENARIOS[name]
        ratios = []
        for i in range(args.pairs):
            with tempfile.TemporaryDirectory() as tmp:
                a_out, b_out = Path(tmp) / "auto", Path(tmp) / "full"
                load = os.getloadavg()[0]
                a, b = timed(cli, "auto", a_out), timed(cli, "full", b_out)
                ra, rb = records(a_out), records(b_out)
                equal = bool(ra) and ra == rb and all(r["status"] == "ok" for r in ra.values())
                bad |= not equal
                ratios.append(a / b)
                print(f"{name} pair {i + 1}: extrapolated {a:.1f} s, full {b:.1f} s, ratio {a / b:.2f}; "
                      f"{len(ra)} records {'equal' if equal else 'DIFFER'}; load {load:.1f}", flush=True)
        median = statistics.median(ratios)
        print(f"{name}: median ratio {median:.2f} (target <= {target})", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
