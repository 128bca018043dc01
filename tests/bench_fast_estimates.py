"""Estimates fast enough to search (issue 16): wall times of full-size estimate cells through the
launcher, each scenario in a fresh launcher process (so the fork server starts cold in each).

    python tests/bench_fast_estimates.py [--skip-fit] [--main-job] [--repeat 1]

Scenarios (LLaMA2-7B, bf16, all 7 projections, batch 4 x seq 1024, estimate mode):
- ``one cold``: one LoRA r 16 cell, a fresh launcher process (default start: fork server).
- ``one cold, spawn``: the same with ``start="spawn"`` (how every cell started before).
- ``five in one run``: five LoRA cells (r 8, 16, 24, 32, 64) in one run, ``--jobs 1``; the
  target is wall per cell <= 0.6 x ``one cold``.
- ``fit``: ``lamda-bench fit --workload llama2-7b --method lora lamda --budget 24GiB --seq 1024``
  into a fresh directory; target <= 180 s.
- ``main job`` (only with ``--main-job``): ``lamda-bench run suites/llama7b.toml --jobs 2`` into a
  fresh directory; target <= 120 s on an idle 2-core machine.

Prints each wall time with the 1-minute load average before and after (a shared machine makes
every figure slower; say so when you quote one), and for the launcher scenarios the CPU time
they cost, which load does not inflate as much: each cell process's own user + system time
(a forked cell's count starts at its fork; a spawned cell's includes its imports), plus the fork
server's own time (its imports, paid once per run). Exit status 1 when a target is missed or a
cell fails. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CELL = dict(workload="llama2-7b", method="lora", r=16, batch=4, seq=1024, dtype="bf16", targets="all",
            mode="estimate", device="auto")
FIVE_RANKS = (8, 16, 24, 32, 64)


def timed_run_cell(cell: dict, artifacts_dir: str | None) -> dict:
    """The runner of the bench's cells: runner.run_cell, plus this process's CPU seconds."""
    from lamda_bench.runner import run_cell

    record = run_cell(cell, artifacts_dir)
    t = os.times()
    record["bench_cpu_s"] = t.user + t.system
    return record


def _server_cpu_s() -> float:
    """CPU seconds the fork server has used itself (its imports), 0 when none is running."""
    from multiprocessing import forkserver

    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    if not pid:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _driver(ranks: list[int], start: str, out: str) -> None:
    """Run in the child interpreter: one launcher run of the given LoRA ranks; prints statuses."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from lamda_bench.suite.cell import Cell
    from lamda_bench.launch.local import run_cells

    cells = [Cell.from_dict({**CELL, "r": r}) for r in ranks]
    summary = run_cells(cells, out, "bench", runner="bench_fast_estimates:timed_run_cell", jobs=1,
                        progress=False, start=start)
    print(json.dumps({"server_cpu_s": _server_cpu_s(),
                      "cells": [[r["status"], r.get("error"), r["launch"]["start"], r["launch"]["wall_s"],
                                 r.get("bench_cpu_s")] for r in summary.records]}))


def _timed(cmd: list[str]) -> tuple[float, str, float, float]:
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
    return wall, out.stdout, load0, os.getloadavg()[0]


def launcher_run(ranks: list[int], start: str) -> tuple[float, list, float, float, float]:
    with tempfile.TemporaryDirectory() as out:
        wall, stdout, l0, l1 = _timed([sys.executable, __file__, "--_driver", ",".join(map(str, ranks)), start, out])
    result = json.loads(stdout.strip().splitlines()[-1])
    cpu = result["server_cpu_s"] + sum(c[4] or 0 for c in result["cells"])
    return wall, result["cells"], cpu, l0, l1


def cli_run(args: list[str]) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory() as out:
        wall, _, l0, l1 = _timed([sys.executable, "-m", "lamda_bench", *args, "--out", out, "--no-progress"])
    return wall, l0, l1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-fit", action="store_true")
    ap.add_argument("--main-job", action="store_true", help="also time suites/llama7b.toml --jobs 2")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--_driver", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._driver:
        ranks, start, out = args._driver
        _driver([int(r) for r in ranks.split(",")], start, out)
        return 0

    missed = False
    for i in range(args.repeat):
        cold, st, cold_cpu, a0, a1 = launcher_run([16], "auto")
        print(f"one cold (fork server): {cold:.1f} s wall, {cold_cpu:.1f} s cpu  load {a0:.1f} -> {a1:.1f}", flush=True)
        spawn, st2, spawn_cpu, b0, b1 = launcher_run([16], "spawn")
        print(f"one cold, spawn:        {spawn:.1f} s wall, {spawn_cpu:.1f} s cpu  load {b0:.1f} -> {b1:.1f}",
              flush=True)
        five, st5, five_cpu, c0, c1 = launcher_run(list(FIVE_RANKS), "auto")
        n = len(FIVE_RANKS)
        ratio, cpu_ratio = five / n / cold, five_cpu / n / spawn_cpu
        print(f"five in one run:        {five:.1f} s wall = {five / n:.1f} s/cell = {ratio:.2f} x one cold "
              f"(target <= 0.60); cpu {five_cpu:.1f} s = {five_cpu / n:.1f} s/cell = {cpu_ratio:.2f} x a spawned "
              f"cell's  load {c0:.1f} -> {c1:.1f}", flush=True)
        print("  per cell [launch wall s, cell cpu s]:", [[round(c[3], 1), round(c[4] or 0, 1)] for c in st5],
              flush=True)
        failed = [c for c in st + st2 + st5 if c[0] != "ok"]
        missed |= ratio > 0.6 or bool(failed)
        if not args.skip_fit:
            fit, d0, d1 = cli_run(["fit", "--workload", "llama2-7b", "--method", "lora", "lamda",
                                   "--budget", "24GiB", "--seq", "1024"])
            print(f"fit lora lamda 24GiB seq 1024: {fit:.1f} s  target <= 180  load {d0:.1f} -> {d1:.1f}",
                  flush=True)
            missed |= fit > 180
        if args.main_job:
            job, e0, e1 = cli_run(["run", "suites/llama7b.toml", "--jobs", "2"])
            print(f"main job --jobs 2: {job:.1f} s  target <= 120 (idle machine)  load {e0:.1f} -> {e1:.1f}",
                  flush=True)
            missed |= job > 120
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
