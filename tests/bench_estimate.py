"""Wall time of the full-size estimate cell, process start included (the issue's 15 s budget).

    python tests/bench_estimate.py [--method lora lamda] [--budget 15] [--artifacts DIR]

Each method runs in a fresh interpreter (``python -c``: imports, model build on meta, method
applied, fake tensors, one instrumented step), timed from outside, as a launcher would spawn
it. Prints the wall time, the CPU time the child used (on a busy machine wall time includes
waiting for a core), the load average, and the record's memory in GiB (2^30 bytes).
Exit status 1 when a run exceeds the budget or fails. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CELL = dict(workload="llama2-7b", r=16, batch=4, seq=1024, dtype="bf16", targets="all",
            mode="estimate", device="auto")
CHILD = (
    "import json, sys; from lamda_bench.execute import run_cell; "
    "print(json.dumps(run_cell(json.loads(sys.argv[1]), sys.argv[2] or None)))"
)
GIB = 2**30


def run_one(method: str, artifacts: str = "") -> tuple[float, float, dict]:
    cell = {**CELL, "method": method}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cell), artifacts], cwd=ROOT, capture_output=True,
                         text=True, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if out.returncode != 0:
        raise SystemExit(f"{method}: child failed ({out.returncode}): {out.stderr.strip().splitlines()[-1:]}")
    return wall, cpu, json.loads(out.stdout.strip().splitlines()[-1])


def gib(v):
    return None if v is None else round(v / GIB, 3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", nargs="+", default=["lora", "lamda"])
    ap.add_argument("--budget", type=float, default=15.0, help="seconds of wall time allowed per cell")
    ap.add_argument("--artifacts", default="", help="artifacts dir (the timeline is then tracked and written, as a launcher run does)")
    args = ap.parse_args()
    failed = False
    for method in args.method:
        wall, cpu, rec = run_one(method, args.artifacts)
        load = os.getloadavg()[0]
        print(f"{method}: wall {wall:.2f} s, child cpu {cpu:.2f} s, load {load:.2f}, status {rec['status']}"
              f"{' (' + rec['error'] + ')' if rec['error'] else ''}")
        if rec["status"] != "ok" or wall > args.budget:
            failed = True
        if rec["status"] != "ok":
            continue
        mem = {k: gib(v) for k, v in rec["memory"].items() if k != "at_peak"}
        print("  memory GiB:", {k: v for k, v in mem.items() if v is not None})
        print("  at peak GiB:", {k: gib(v) for k, v in rec["memory"]["at_peak"].items()})
        print("  params:", rec["params"])
        print("  flops:", {k: v for k, v in rec["flops"].items() if k != "attention_counting"})
        pred = rec["predicted"]
        print("  predicted:", {"trainable": pred["params"]["trainable"], "updates": pred["params"]["updates"],
                               "saved_adapter_GiB": gib(pred["memory"]["saved_activations_adapter"]),
                               **pred["flops"]})
        print("  estimate device:", rec["info"].get("estimate_device"), "| attention:",
              rec["info"]["attn_implementation"], rec["info"]["attention_kernels"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
