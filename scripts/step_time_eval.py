"""Calibration (in-sample) and validation (out-of-sample) of the step-time model.

In-sample: the LLaMA2-7B H100 cells of reports/gpu/measured/results.jsonl (time.step_median_s).
Out-of-sample: scripts/step_time_points.json (public measurements nobody here made); a point
with ``accumulation`` n ran n micro-batches per optimizer step (its forward and backward ops count n times);
one with ``attention_causal`` ran a causal attention kernel (see ``causal``).
Each cell is traced as an estimate at layers 3, 4, 5 with the op recorder (scripts/trace_cells.py,
cached in CACHE), predicted per depth and extrapolated to its model's depth (verified on the third
probe). Writes lamda_bench/card/validation.json and prints one line per point.

usage: PYTHONPATH=. python scripts/step_time_eval.py [CACHE] [--trace-only] [--only in_sample|out_of_sample]
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from lamda_bench.card.step_time import TIME_MODEL_VERSION, extrapolate_time, predict_step_time  # noqa: E402
from lamda_bench.model import workloads  # noqa: E402

MEASURED = ROOT / "reports/gpu/measured/results.jsonl"
POINTS = ROOT / "scripts/step_time_points.json"
OUT = ROOT / "lamda_bench/card/validation.json"
H100_SOURCE = "reports/gpu/measured/results.jsonl (this project's H100 80GB HBM3 run, eager, bf16, AdamW)"


def in_sample() -> list[dict]:
    by_id: dict[str, dict] = {}
    for line in MEASURED.read_text().splitlines():
        r = json.loads(line)
        if r["status"] != "ok" or r["cell"]["workload"] != "llama2-7b":
            continue
        cell = {k: v for k, v in r["cell"].items() if k not in ("timeout_s", "mode", "device", "steps", "warmup")}
        p = by_id.setdefault(r["id"], {"name": r["id"], "trace": r["id"], "card": "H100-80GB", "cell": cell, "runs": [],
                                       "source": H100_SOURCE})
        p["runs"].append(r["time"]["step_median_s"])
    for p in by_id.values():
        p["measured_s"] = statistics.median(p.pop("runs"))
        c = p["cell"]
        p["setup"] = (f"{c['method']} r{c['r']} {c['targets']} b{c['batch']} x {c['seq']}"
                      f"{' checkpointing' if c.get('gradient_checkpointing') else ''}"
                      f"{'' if c.get('options', {}).get('autocast_adapter_dtype', True) else ' adapter bf16'}")
    return list(by_id.values())


def out_of_sample() -> list[dict]:
    points = json.loads(POINTS.read_text())["out_of_sample"]
    for p in points:
        w = p["cell"]["workload"]
        if w.endswith(".json"):
            p["cell"] = {**p["cell"], "workload": str(ROOT / w)}
    return points


def cell_for_trace(p: dict) -> dict:
    return {**p["cell"], "device": "auto"}


def trace_name(p: dict) -> str:
    """Cache file stem: the record id (in-sample), else the cell's hash (one cell on two cards:
    one trace)."""
    import hashlib

    if "trace" in p:
        return p["trace"]
    return hashlib.sha256(json.dumps(p["cell"], sort_keys=True).encode()).hexdigest()[:16]


def accumulate(ops: list[dict], n: int) -> list[dict]:
    """One optimizer step of ``n`` micro-batches: every forward and backward op ``n`` times, the
    optimizer's once (the trace is one micro-batch and one optimizer step)."""
    return [op if op["phase"] == "optimizer" else {**op, "count": op["count"] * n} for op in ops]


def causal(ops: list[dict]) -> list[dict]:
    """The attention ops as causal kernels: on fake tensors transformers cannot see that a mask is
    all ones, so it passes a mask and ``is_causal=False``; a real run whose kernel is causal
    (flash-attn's ``causal=True``) skips the masked half."""
    return [{**op, "causal": True} if op["kind"] == "attention" else op for op in ops]


def predict(p: dict, cache: Path) -> dict:
    per_depth = {}
    for depth in (3, 4, 5):
        ops = json.loads((cache / f"{trace_name(p)}.L{depth}.json").read_text())
        ops = accumulate(ops, p.get("accumulation", 1))
        per_depth[depth] = predict_step_time(causal(ops) if p.get("attention_causal") else ops, p["card"])
    target = workloads.get_workload(p["cell"]["workload"]).default_layers
    return extrapolate_time(per_depth, target)


def main(argv: list[str]) -> None:
    from trace_cells import DEPTHS, trace_ops

    cache = Path(argv[0]) if argv and not argv[0].startswith("--") else Path("/tmp/st_cache")
    cache.mkdir(parents=True, exist_ok=True)
    sets = {"in_sample": in_sample(), "out_of_sample": out_of_sample()}
    if "--only" in argv:  # trace / report one set: --only in_sample | out_of_sample
        only = argv[argv.index("--only") + 1]
        sets = {only: sets[only]}
    for points in sets.values():
        for p in points:
            for depth in DEPTHS:
                path = cache / f"{trace_name(p)}.L{depth}.json"
                if not path.exists():
                    path.write_text(json.dumps(trace_ops({**cell_for_trace(p), "layers": depth})))
                    print(f"traced {p['name']} L{depth}", flush=True)
    if "--trace-only" in argv:
        return
    out = {"time_model_version": TIME_MODEL_VERSION}
    for label, points in sets.items():
        rows = []
        for p in points:
            pred = predict(p, cache)
            err = (pred["step_s"] - p["measured_s"]) / p["measured_s"]
            rows.append({"name": p["name"], "card": p["card"], "source": p["source"], "setup": p["setup"],
                         "measured_s": round(p["measured_s"], 5), "predicted_s": round(pred["step_s"], 5),
                         "error": round(err, 4), "bound": pred["bound"], "excluded": p.get("excluded"),
                         "parts_s": {k: round(pred[k], 5) for k in ("compute_bound_s", "memory_bound_s", "launch_s",
                                                                     "device_s", "host_s")},
                         "by_kind_s": {k: round(v, 5) for k, v in pred["by_kind_s"].items()}})
            print(f"{label:14s} {p['name'][:38]:38s} {p['card']:13s} measured {p['measured_s']:.4f} "
                  f"predicted {pred['step_s']:.4f} ({err:+.1%}) {pred['bound']}{' EXCLUDED' if p.get('excluded') else ''}",
                  flush=True)
        errs = [abs(r["error"]) for r in rows if not r["excluded"]]
        out[label] = {"points": rows, "median_abs_error": round(statistics.median(errs), 4),
                      "max_abs_error": round(max(errs), 4)}
        print(f"{label}: median |error| {statistics.median(errs):.1%}, max {max(errs):.1%} over {len(errs)} scored points")
    OUT.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
