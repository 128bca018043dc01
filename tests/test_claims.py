"""Claims ledger: verdict logic on small synthetic record sets (each verdict path), and a small
real run (run_cell on the linear workload, real probes) feeding write_claims."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lamda_bench.claims import ClaimsError, write_claims
from lamda_bench.claims import updates_search, verdicts as v
from lamda_bench.claims.probes import init_probe, run_probe, svd_probe
from lamda_bench.results.files import append_record


# ---- synthetic records -------------------------------------------------------------------------

def rec(method: str, *, status: str = "ok", workload: str = "llama2-7b", options: dict | None = None, **fields) -> dict:
    """A minimal record carrying what the verdicts read; ``fields`` are dotted paths."""
    opts = {"autocast_adapter_dtype": True, "dropout": 0.0}
    if method == "lamda":
        opts.update(freeze_mode="split", freeze_fraction=0.3)
    opts.update(options or {})
    r = {"status": status, "id": f"{workload}-{method}-{json.dumps(opts, sort_keys=True)}-{json.dumps(fields, sort_keys=True, default=str)}",
         "cell": {"workload": workload, "method": method, "r": 8, "targets": "all", "batch": 4, "seq": 1024,
                  "dtype": "bf16", "device": "cpu", "mode": "estimate", "layers": None, "options": opts}}
    for dotted, value in fields.items():
        node = r
        parts = dotted.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return r


def peak_pair(lora_peak: int, lamda_peak: int, seq: int = 1024, field: str = "peak", fp32: bool = True) -> list[dict]:
    opts = {"autocast_adapter_dtype": fp32}
    return [rec("lora", cell__seq=seq, options=opts, **{f"memory__{field}": lora_peak}),
            rec("lamda", cell__seq=seq, options=opts, **{f"memory__{field}": lamda_peak})]


def test_peak_is_judged_under_both_adapter_dtype_policies():
    both = peak_pair(140, 100) + peak_pair(135, 100, fp32=False) + peak_pair(105, 100, seq=256)
    row = v.claim_peak(both)
    assert row.verdict == v.HOLDS
    assert "fp32 adapters: up to 1.40x" in row.measured and "adapters in model dtype: up to 1.35x" in row.measured
    # PEFT's fp32-adapter policy alone reaches it: the verdict says so
    row = v.claim_peak(peak_pair(140, 100) + peak_pair(116, 100, fp32=False))
    assert row.verdict == v.PARTLY and "reached only with fp32 adapters" in row.reason and "1.16x" in row.reason
    row = v.claim_peak(peak_pair(140, 100))
    assert row.verdict == v.PARTLY and "no record with adapters in model dtype" in row.reason
    row = v.claim_peak(peak_pair(120, 100) + peak_pair(110, 100, fp32=False))
    assert row.verdict == v.PARTLY and "1.20x" in row.reason and "GPU run" in row.reason
    assert v.claim_peak(peak_pair(90, 100) + peak_pair(95, 100, fp32=False)).verdict == v.NOT


def test_peak_gpu_records_judge():
    gpu = peak_pair(110, 100, field="cuda_max_allocated") + peak_pair(105, 100, field="cuda_max_allocated", fp32=False)
    row = v.claim_peak(peak_pair(200, 100) + peak_pair(200, 100, fp32=False), gpu_records=gpu)
    assert row.verdict == v.PARTLY and "measured on a GPU" in row.reason and "2.00x" not in row.reason


def test_pairs_ignore_failed_and_mismatched_cells():
    records = [rec("lora", memory__peak=200), rec("lamda", status="error", memory__peak=100),
               rec("lamda", memory__peak=100, cell__batch=8)]
    assert v.claim_peak(records).verdict == v.CANNOT


def act_pair(lora_total, lora_adapter, lamda_total, lamda_adapter, **cell):
    extra = {f"cell__{k}": x for k, x in cell.items()}
    return [rec("lora", memory__saved_activations=lora_total, memory__saved_activations_adapter=lora_adapter, **extra),
            rec("lamda", memory__saved_activations=lamda_total, memory__saved_activations_adapter=lamda_adapter, **extra)]


def test_model_activations_share_removed():
    row = v.claim_model_activations(act_pair(200, 100, 101, 1))
    assert row.verdict == v.HOLDS and "99.0%" in row.measured
    # Half of LoRA's adapter bytes also saved by base ops: LaMDA removes only half.
    assert v.claim_model_activations(act_pair(200, 100, 150, 1, batch=1)).verdict == v.PARTLY
    assert v.claim_model_activations(act_pair(200, 100, 200, 1)).verdict == v.NOT


def layer_pair(d: int, r: int, lamda_bytes_per_token: int, predicted_ok: bool = True) -> list[dict]:
    tokens = 4 * 1024
    lb, mb = (d + r) * 4 * tokens, lamda_bytes_per_token * tokens
    cell = {"cell__d_in": d, "cell__d_out": d, "cell__r": r}
    return [rec("lora", workload="linear", memory__saved_activations_adapter=lb,
                predicted__memory__saved_activations_adapter=lb, **cell),
            rec("lamda", workload="linear", memory__saved_activations_adapter=mb,
                predicted__memory__saved_activations_adapter=mb if predicted_ok else mb + 1, **cell)]


def test_layer_activations_r_dimensional_or_not():
    good = layer_pair(1024, 8, 64) + layer_pair(4096, 8, 64)
    row = v.claim_layer_activations(good)
    assert row.verdict == v.HOLDS and "1024, 4096" in row.reason
    grows_with_d = layer_pair(1024, 8, 64) + layer_pair(4096, 8, 4096 * 4)
    assert v.claim_layer_activations(grows_with_d).verdict == v.NOT
    assert v.claim_layer_activations(layer_pair(1024, 8, 64, predicted_ok=False)).verdict == v.NOT


def freeze_pair(split_flops, mask_flops, split_opt, mask_opt) -> list[dict]:
    return [rec("lamda", series__backward_flops=split_flops, series__optimizer=split_opt),
            rec("lamda", options={"freeze_mode": "mask"}, series__backward_flops=mask_flops, series__optimizer=mask_opt)]


def test_freezing_split_vs_mask():
    row = v.claim_freezing(freeze_pair([10, 8, 6], [10, 10, 10], [300, 100, 7], [300, 300, 300]))
    assert row.verdict == v.PARTLY and "masking" in row.reason
    assert v.claim_freezing(freeze_pair([10, 10, 10], [10, 10, 10], [300, 300, 300], [300, 300, 300])).verdict == v.NOT
    assert v.claim_freezing(freeze_pair([10, 8], [10, 9], [3, 1], [3, 2])).verdict == v.HOLDS


def svd_rec(shape, svd, seconds, scale_of=None):
    return rec("pissa", workload="linear", probe={"kind": "svd-time", "shape": list(shape), "svd": svd, "seconds": seconds,
                                                "scale_of": list(scale_of) if scale_of else None, "threads": 2,
                                                "call": "torch.svd_lowrank(W, q=64, niter=4)"})


def test_svd_time_extrapolates_and_judges():
    shapes = {(400, 400): 2, (800, 400): 1}
    probes = [svd_rec((400, 400), "lowrank", 1.0), svd_rec((800, 400), "lowrank", 2.0),
              svd_rec((100, 100), "full", 1.0, (400, 400)), svd_rec((200, 200), "full", 8.0, (400, 400)),
              svd_rec((200, 100), "full", 2.0, (800, 400))]
    exponent, full = v._full_svd_extrapolation([p for p in probes if p["probe"]["svd"] == "full"], shapes)
    assert exponent == pytest.approx(3.0)
    assert full[(400, 400)] == pytest.approx(64.0) and full[(800, 400)] == pytest.approx(128.0)
    row = v.claim_svd_time(probes, target_shapes=shapes)
    assert row.verdict == v.HOLDS and "4.00 s" in row.measured  # 2 x 1 s + 1 x 2 s
    slow = [svd_rec((400, 400), "lowrank", 100.0), svd_rec((800, 400), "lowrank", 2.0)]
    assert v.claim_svd_time(slow, target_shapes=shapes).verdict == v.CANNOT
    assert v.claim_svd_time(slow[:1], target_shapes=shapes).reason.startswith("randomized-SVD timings are missing")


def init_rec(relative, method="pissa", init="pissa"):
    return rec(method, workload="tiny-llama", probe={"kind": "init-diff", "max_abs_diff": relative, "max_abs_output": 1.0,
                                                   "relative": relative, "init": init, "adapted_layers": 14})


def test_init_unchanged_is_pissas_claim_and_credits_lamda_with_nothing():
    lamda_ok = init_rec(2e-7, "lamda", "svd (full torch.linalg.svd)")
    row = v.claim_init_unchanged([init_rec(3e-7), init_rec(1e-6), lamda_ok])
    assert row.verdict == v.HOLDS and row.source == "PiSSA, arXiv 2404.02948"
    assert "LaMDA's inits here also leave it unchanged" in row.reason and "credited with no more" in row.reason
    assert "paper's A, B, S; our residual" in "\n".join(row.details)
    assert v.claim_init_unchanged([init_rec(3e-7), init_rec(0.2)]).verdict == v.NOT
    # LaMDA's probes alone decide nothing: the unchanged output is not the LaMDA paper's claim
    assert v.claim_init_unchanged([lamda_ok]).verdict == v.CANNOT
    row = v.claim_init_unchanged([init_rec(3e-7), init_rec(0.5, "lamda", "svd-sigma (full torch.linalg.svd)")])
    assert row.verdict == v.HOLDS and "not a paper claim" in row.reason


def alloc_rec(rule, layers):
    return rec("lamda++", workload="minilm-l6", options={"rule": rule},
               info__method__allocation={"layers": {f"l{i}": x for i, x in enumerate(layers)}})


def test_lamda_pp_is_judged_on_the_papers_monotone_relation():
    # [rank, energy, energy_uniform]: the energy score is energy_uniform, E_l(r)
    monotone = alloc_rec("max-min", [[12, 0.5, 0.3], [8, 0.6, 0.5], [4, 0.7, 0.8]])
    row = v.claim_lamda_pp([monotone])
    assert row.verdict == v.HOLDS and "every one of 3 layer pairs" in row.reason
    assert "accuracy" in row.reason and "cannot be checked by a memory harness" in row.reason
    one_reversed = alloc_rec("max-min", [[12, 0.5, 0.3], [8, 0.6, 0.5], [10, 0.6, 0.6], [4, 0.7, 0.8]])
    row = v.claim_lamda_pp([one_reversed])
    assert row.verdict == v.PARTLY and "5 give the lower-scored layer the higher rank" in row.reason
    assert "1 a lower one" in row.reason
    assert v.claim_lamda_pp([alloc_rec("max-min", [[4, 0.5, 0.3], [12, 0.6, 0.8]])]).verdict == v.NOT
    # max-total moves rank the other way: shown, never counted as support
    opposite = alloc_rec("max-total", [[4, 0.5, 0.3], [12, 0.9, 0.8]])
    assert v.claim_lamda_pp([opposite]).verdict == v.CANNOT
    row = v.claim_lamda_pp([monotone, opposite])
    assert row.verdict == v.HOLDS and "max-total, the other reading, is not counted" in row.reason
    assert "max-total: 0 of 1 pairs ordered, 1 reversed" in row.measured


def test_rank_relation_helpers():
    from lamda_bench.claims.spectral_verdicts import monotone_pairs, spearman

    assert monotone_pairs([0.1, 0.2, 0.2], [5, 4, 4]) == {"pairs": 2, "agree": 2, "tied": 0, "reversed": 0}
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 1, 2, 2]) == pytest.approx(0.894427, rel=1e-5)
    assert spearman([1, 2, 3], [5, 5, 5]) is None


def updates_pair(lora_updates=None, lamda_updates=None, horizon=10, r=8):
    """tiny-llama records whose updates are the closed form's unless given."""
    cell = {"cell__r": r, "info__steps__total_steps": horizon}
    lu = updates_search.updates("tiny-llama", "all", "lora", r, 0.3, horizon) if lora_updates is None else lora_updates
    mu = updates_search.updates("tiny-llama", "all", "lamda", r, 0.3, horizon) if lamda_updates is None else lamda_updates
    return [rec("lora", workload="tiny-llama", params__updates=lu, **cell),
            rec("lamda", workload="tiny-llama", params__updates=mu, **cell)]


def fake_search(ratio_at_default: float, ratio_lower_f: float):
    def search(names):
        return [updates_search.Setting("tiny-llama", "all", 4, 0.3, 100, int(ratio_at_default * 1000), 1000),
                updates_search.Setting("tiny-llama", "all", 4, 0.1, 100, int(ratio_lower_f * 1000), 1000)]
    return search


def test_updates_verdicts_and_validation():
    names = ("tiny-llama",)
    records = updates_pair()
    assert v.claim_updates(records, names, fake_search(20.0, 30.0)).verdict == v.HOLDS
    row = v.claim_updates(records, names, fake_search(12.0, 30.0))
    assert row.verdict == v.PARTLY and "freeze_fraction <= 0.1" in row.reason
    assert "not reproduced at the default" in row.reason and "reachable with faster freezing" in row.reason
    ceiling = updates_search.ceiling("tiny-llama", "all", 0.3)
    assert f"closed-form ceiling at freeze_fraction 0.3 is {ceiling:.2f}x" in row.reason
    assert v.claim_updates(records, names, fake_search(12.0, 15.0)).verdict == v.NOT
    # Records the closed form does not reproduce: no search, no verdict.
    assert v.claim_updates(updates_pair(lamda_updates=1), names, fake_search(20.0, 30.0)).verdict == v.CANNOT


def test_real_search_bound_at_default_fraction():
    # B trains on average at most half its columns over the first f of the steps (ceil rounds up),
    # so 2 sum(d_in + d_out) / (f sum d_out) bounds the ratio; at r = 1 ceil keeps B whole until it freezes.
    # tiny-llama per layer: sum(d_in + d_out) = 560 + 608, sum(d_out) = 608
    bound = 2 * (560 + 608) / (0.3 * 608)
    assert updates_search.ceiling("tiny-llama", "all", 0.3) == pytest.approx(bound)
    ratios = {(r, h): updates_search.setting("tiny-llama", "all", r, 0.3, h).ratio
              for r in (1, 4, 8, 16, 24, 32) for h in (10, 100, 1000)}
    assert all(x < bound for x in ratios.values())
    assert ratios[(1, 100)] < ratios[(8, 100)]
    # LLaMA2-7B attention (4096 -> 4096): the ceiling 2 x 2 / 0.3 = 13.33x; long runs come near it
    # where r^2 and the ceil() are small next to 0.3 d_out r / 2
    assert updates_search.ceiling("llama2-7b", "attn", 0.3) == pytest.approx(40 / 3)
    long_runs = {r: updates_search.setting("llama2-7b", "attn", r, 0.3, 1000).ratio for r in (16, 24, 32)}
    assert 12.2 < long_runs[32] < 40 / 3 and max(long_runs.values()) < 40 / 3
    assert updates_search.fraction_for("tiny-llama", "all", 17.7) == pytest.approx(2 * (560 + 608) / (17.7 * 608))


def test_no_records_cannot_be_checked():
    rows = v.all_claims([])
    assert [r.key for r in rows] == ["1a", "1b", "2a", "2b", "3", "4", "5", "6a", "6b", "2v"]
    assert {r.verdict for r in rows} == {v.CANNOT}


def test_bad_verdict_rejected():
    with pytest.raises(ValueError, match="not one of"):
        v.ClaimRow("x", "c", "s", "-", "-", "-", "maybe", "r")


def test_write_claims_needs_results(tmp_path):
    with pytest.raises(ClaimsError, match="no results"):
        write_claims(tmp_path)


# ---- a small real run --------------------------------------------------------------------------

def test_real_cells_and_probes_feed_write_claims(tmp_path):
    from lamda_bench.suite.cell import Cell
    from lamda_bench.runner import run_cell

    for d in (64, 128):
        for method in ("lora", "lamda"):
            opts = {"svd_niter": 2} if method == "lamda" else {}
            cell = Cell(workload="linear", method=method, r=4, d_in=d, d_out=d, batch=2, seq=8, dtype="fp32",
                        device="cpu", mode="measure", warmup=0, steps=1, options=tuple(opts.items()))
            record = run_cell(cell.to_dict())
            assert record["status"] == "ok", record["error"]
            append_record(tmp_path / "results.jsonl", record)
    probes = [init_probe("tiny-llama", "pissa", niter=None), init_probe("tiny-llama", "lamda", svd_niter=None),
              init_probe("tiny-llama", "lamda", init="svd-sigma", svd_niter=None),
              svd_probe(64, 64, "lowrank", r=4), svd_probe(32, 32, "full", scale_of=(64, 64))]
    for cell in probes:
        record = run_probe(cell.to_dict())
        assert record["status"] == "ok", record["error"]
        append_record(tmp_path / "probes" / "results.jsonl", record)

    path = write_claims(tmp_path, gpu_dir=tmp_path / "no-gpu")
    text = path.read_text()
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert "**holds**" in rows["2a"]  # r-dimensional at layer level, d 64 and 128, as predicted
    assert "**holds**" in rows["6a"]  # PiSSA leaves tiny-llama's output unchanged...
    assert "LaMDA's inits here also leave it unchanged" in rows["6a"]  # ...and so do both LaMDA SVD inits (ours)
    assert "| svd-sigma (full torch.linalg.svd) | ours |" in text
    assert "**cannot be checked here**" in rows["3"]  # no full-model pair in this run
    assert "**cannot be checked here**" in rows["5"]  # LLaMA2-7B shapes not timed here


def test_probe_errors_become_records():
    bad = svd_probe(8, 8, "qr").to_dict()
    record = run_probe(bad)
    assert record["status"] == "error" and "svd must be" in record["error"]
