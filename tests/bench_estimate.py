"""Wall time of the full-size estimate cell, process start included (the issue's 15 s budget).

    python tests/bench_estimate.py [--method lora lamda] [--repeat 3] [--budget 15]

Each run goes through the local launcher exactly as ``lamda-bench run`` does: one freshly
spawned interpreter per cell (imports, model build on meta, method applied, fake tensors,
the instrumented step with its timeline, the record sent back), timed from this process
around ``run_cells``. Prints every run's wall time, the CPU time the cell process used (on
a busy machine wall time includes waiting for a core), the load average, and the record's
memory in GiB (2^30 bytes). Exit status 1 when a method's median run exceeds the budget or
a run fails. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time

from lamda_bench.suite.cell import Cell
from lamda_bench.launch.local import run_cells

CELL = dict(workload="llama2-7b", r=16, batch=4, seq=1024, dtype="bf16", targets="all",
            mode="estimate", device="auto")
GIB = 2**30


def run_one(method: str) -> tuple[float, float, dict]:
    """(wall s, cell-process CPU s, record) of one launcher run of the cell."""
    cell = Cell.from_dict({**CELL, "method": method})
    with tempfile.TemporaryDirectory() as out:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        summary = run_cells([cell], out, "bench", progress=False)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, summary.records[0]


def gib(v):
    return None if v is None else round(v / GIB, 3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", nargs="+", default=["lora", "lamda"])
    ap.add_argument("--repeat", type=int, default=1, help="runs per method (median judged against the budget)")
    ap.add_argument("--budget", type=float, default=15.0, help="seconds of wall time allowed per cell")
    args = ap.parse_args()
    failed = False
    for method in args.method:
        walls = []
        for _ in range(args.repeat):
            wall, cpu, rec = run_one(method)
            walls.append(wall)
            print(f"{method}: wall {wall:.2f} s, cell process cpu {cpu:.2f} s, load {os.getloadavg()[0]:.2f}, "
                  f"status {rec['status']}{' (' + rec['error'] + ')' if rec.get('error') else ''}", flush=True)
            if rec["status"] != "ok":
                failed = True
        median = statistics.median(walls)
        print(f"{method}: median {median:.2f} s, min {min(walls):.2f}, max {max(walls):.2f} over {len(walls)} runs "
              f"(budget {args.budget:g} s)")
        failed |= median > args.budget
        if rec["status"] == "ok":
            describe(rec)
    return 1 if failed else 0


def describe(rec: dict) -> None:
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


if __name__ == "__main__":
    sys.exit(main())
