"""Preference objectives (cell key ``objective``, model/objective.py): each objective's step measured
on the CPU equals its estimate to the byte, DPO holds more than SFT, the DPO / ORPO / SimPO / KTO
loss values equal hand-written TRL formulas on a tiny model, default ids stay, bad values and
combinations are one line, and trainer configs map stage / rl to the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lamda_bench import cli
from lamda_bench.methods import AdapterSpec, get_method
from lamda_bench.model import objective, workloads
from lamda_bench.runner import run_cell
from lamda_bench.suite.cell import Cell, CellError
from lamda_bench.suite.parse import SuiteError, parse_suite
from lamda_bench.trainer_config import load, translate
from lamda_bench.trainer_config.fate import MAPPED, NOT_MODELLED

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIGS = Path(__file__).resolve().parent / "trainer_configs"
ID_BEFORE = "tiny-llama-lora-r8-e1258d0bcfc1"  # Cell(workload="tiny-llama", method="lora").id before the keys
MEMORY = ("weights", "grads", "optimizer", "saved_activations", "saved_activations_adapter", "peak_forward",
          "peak_backward", "peak_step", "peak", "at_peak", "peak_steady")
TINY = dict(workload="tiny-llama", method="lora", r=4, batch=2, seq=16, dtype="bf16", device="cpu",
            mode="measure", warmup=1, steps=0)


def ok(record):
    assert record["status"] == "ok", record["error"]
    return record


@pytest.mark.parametrize("keys", [
    dict(objective="dpo"),
    dict(objective="orpo"),
    dict(objective="simpo"),
    dict(objective="kto"),
    dict(objective="dpo", method="full"),  # the frozen reference copy
    dict(objective="dpo", precision="amp-bf16", gradient_checkpointing=True),  # LLaMA-Factory's recipe
    pytest.param(dict(objective="kto", precision="amp-bf16", gradient_checkpointing=True), marks=pytest.mark.slow),
    pytest.param(dict(objective="dpo", precompute_ref_log_probs=True), marks=pytest.mark.slow),
    pytest.param(dict(objective="kto", method="full"), marks=pytest.mark.slow),
], ids=lambda k: "-".join(str(v) for v in k.values()))
def test_measure_equals_estimate_to_the_byte(keys):
    cell = {**TINY, **keys}
    real = ok(run_cell(cell))
    fake = ok(run_cell({**cell, "mode": "estimate"}))
    for key in MEMORY:
        assert real["memory"][key] == fake["memory"][key], key
    assert real["flops"] == fake["flops"]
    assert real["info"]["objective"] == fake["info"]["objective"]
    for block, key in (("memory", "saved_activations_adapter"), ("memory", "weights"), ("memory", "grads"),
                       ("memory", "optimizer"), ("flops", "adapter_forward"), ("flops", "adapter_backward")):
        predicted = fake["predicted"][block][key]  # closed forms: no-grad calls, the copy
        assert predicted == fake[block][key] or (predicted is None and "precision" in keys), key  # amp: some null
    kind = {"dpo": "disabled adapters", "kto": "disabled adapters", "orpo": "none", "simpo": "none"}[keys["objective"]]
    if keys.get("method") == "full":
        kind = "frozen copy"
        assert real["info"]["objective"]["reference_weights_bytes"] * 2 == real["memory"]["weights"]
    if keys.get("precompute_ref_log_probs"):
        kind = "precomputed"
    assert real["info"]["objective"]["reference"] == kind


def test_dpo_holds_more_than_sft_and_precompute_less_than_dpo():
    cell = {**TINY, "mode": "estimate"}
    sft = ok(run_cell(cell))
    dpo = ok(run_cell({**cell, "objective": "dpo"}))
    pre = ok(run_cell({**cell, "objective": "dpo", "precompute_ref_log_probs": True}))
    assert dpo["memory"]["peak"] > sft["memory"]["peak"]
    assert sft["memory"]["peak"] < pre["memory"]["peak"] <= dpo["memory"]["peak"]
    assert "objective" not in sft["info"]
    assert dpo["info"]["objective"]["rows"] == {"policy": 4, "reference": 4}


# ---- the loss values: TRL's formulas written by hand ------------------------------------


@pytest.fixture(scope="module")
def lora_model():
    cell = Cell(workload="tiny-llama", method="lora", dtype="fp32", device="cpu", batch=2, seq=16)
    model = workloads.build_model(cell, "cpu")
    targets = workloads.resolve_targets(cell, model)
    model = get_method("lora").apply(model, AdapterSpec(r=4, alpha=8.0, targets=targets, dtype=torch.float32)).model
    model.eval()
    torch.manual_seed(0)
    for p in model.parameters():  # lora_B starts at zero: the policy must differ from the reference
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.2)
    return model


def _logps(model, ids, p, average=False, adapters=True):
    """sum (or mean) over the completion of log_softmax(logits)[next token], as TRL's docs state it."""
    if adapters:
        logits = model(input_ids=ids).logits
    else:
        with model.disable_adapter(), torch.no_grad():
            logits = model(input_ids=ids).logits
    per_token = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    completion = per_token[:, p - 1:]
    return completion.mean(-1) if average else completion.sum(-1)


@pytest.mark.parametrize("name", ["dpo", "orpo", "simpo", "kto"])
def test_loss_equals_trls_formula_by_hand(lora_model, name):
    cell = Cell(workload="tiny-llama", method="lora", dtype="fp32", device="cpu", batch=4, seq=16, objective=name)
    inputs = workloads.make_inputs(cell, "cpu")
    got = workloads.compute_loss(cell, lora_model, inputs)
    ids, p, b, beta = inputs["input_ids"], 8, 4, 0.1
    with torch.no_grad():
        if name == "dpo":  # -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), mean
            pi, ref = _logps(lora_model, ids, p), _logps(lora_model, ids, p, adapters=False)
            want = -F.logsigmoid(beta * ((pi[:b] - ref[:b]) - (pi[b:] - ref[b:]))).mean()
        elif name == "orpo":  # NLL(chosen, all tokens) - beta * mean log sigmoid(log odds)
            pi = _logps(lora_model, ids, p, average=True)
            logits = lora_model(input_ids=ids[:b]).logits
            nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:b, 1:].reshape(-1))
            odds = (pi[:b] - pi[b:]) - (torch.log1p(-pi[:b].exp()) - torch.log1p(-pi[b:].exp()))
            want = nll - (beta * F.logsigmoid(odds)).mean()
        elif name == "simpo":  # -log sigmoid(beta * (mean_c - mean_r) - gamma), mean
            pi = _logps(lora_model, ids, p, average=True)
            want = -F.logsigmoid(beta * (pi[:b] - pi[b:]) - 0.5).mean()
        else:  # KTO: z = clamp(mean(KL_pi - KL_ref), 0); desirable 1 - s(beta (r - z)), undesirable 1 - s(beta (z - r))
            kl_ids = inputs["KL_input_ids"]
            z = (_logps(lora_model, kl_ids, p) - _logps(lora_model, kl_ids, p, adapters=False)).mean().clamp(min=0)
            r = _logps(lora_model, ids, p) - _logps(lora_model, ids, p, adapters=False)
            want = torch.cat([1 - torch.sigmoid(beta * (r[0::2] - z)), 1 - torch.sigmoid(beta * (z - r[1::2]))]).mean()
            assert torch.equal(kl_ids[:, p:], torch.roll(ids[:, p:], 1, 0))  # each prompt with the previous completion
    assert got.requires_grad
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), (got, want)


def test_selective_log_softmax_is_log_softmax_then_gather():
    gen = torch.Generator().manual_seed(0)
    logits, index = torch.randn(3, 5, 11, generator=gen), torch.randint(0, 11, (3, 5), generator=gen)
    for dtype in (torch.float32, torch.bfloat16):  # fp32: logsumexp path; bf16: a log_softmax per row
        want = logits.to(dtype).log_softmax(-1).gather(-1, index[..., None]).squeeze(-1)
        got = objective.selective_log_softmax(logits.to(dtype), index)
        assert got.dtype == dtype and torch.allclose(got, want, atol=1e-6)


def test_full_fine_tuning_with_a_reference_says_why_it_is_traced_in_full():
    from types import SimpleNamespace

    from lamda_bench.runner.depth import why_full

    reason = why_full(SimpleNamespace(cell=Cell(workload="llama3.1-8b", method="full", objective="dpo")))
    assert "frozen reference copy" in reason
    assert why_full(SimpleNamespace(cell=Cell(workload="llama3.1-8b", method="lora", objective="dpo"))) is None
    assert why_full(SimpleNamespace(cell=Cell(workload="llama3.1-8b", method="full", objective="dpo",
                                              precompute_ref_log_probs=True))) is None


def test_report_says_the_objective_only_where_a_record_sets_it():
    from lamda_bench.report.axes import Axes, shape_key

    base = Cell(workload="tiny-llama", method="lora").to_dict()
    old = {k: v for k, v in base.items() if k not in ("objective", "precompute_ref_log_probs")}  # before the keys
    axes = Axes.of([{"cell": old}, {"cell": {**base, "batch": 2}}])
    assert axes.varying == ["batch"] and "objective" not in axes.header() and "precompute" not in axes.header()
    axes = Axes.of([{"cell": old}, {"cell": {**base, "objective": "dpo"}}])
    assert axes.varying == ["objective"]
    assert shape_key({"cell": old}) == shape_key({"cell": base}) != shape_key({"cell": {**base, "objective": "dpo"}})


# ---- ids and refusals ----------------------------------------------------------------------


def test_default_cell_id_is_unchanged():
    cell = Cell(workload="tiny-llama", method="lora")
    assert cell.id == ID_BEFORE
    assert Cell(workload="tiny-llama", method="lora", objective="sft", precompute_ref_log_probs=False).id == ID_BEFORE
    assert Cell(workload="tiny-llama", method="lora", objective="dpo").id != ID_BEFORE


@pytest.mark.parametrize("keys, words", [
    (dict(objective="ipo"), "objective 'ipo' is not one of"),
    (dict(precompute_ref_log_probs="yes"), "precompute_ref_log_probs"),
])
def test_bad_values_are_one_line(keys, words):
    key, line = Cell(workload="tiny-llama", method="lora", **keys).problem()
    assert key in keys and words in line and "\n" not in line
    with pytest.raises(CellError):
        Cell(workload="tiny-llama", method="lora", **keys).validate()
    value = json.dumps(next(iter(keys.values())))
    with pytest.raises(SuiteError) as e:
        parse_suite(f'[[sweep]]\nworkload = "tiny-llama"\nmethod = "lora"\n{next(iter(keys))} = {value}\n')
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("keys, words", [
    (dict(workload="linear"), "causal-LM workloads only"),
    (dict(workload="tiny-deberta"), "causal-LM workloads only"),
    (dict(loss="fused_linear_ce"), "is not modelled"),
    (dict(method="lamda"), "LaMDA cannot"),
    (dict(objective="orpo", precompute_ref_log_probs=True), "needs objective 'dpo' or 'kto'"),
    (dict(objective="sft", precompute_ref_log_probs=True), "needs objective 'dpo' or 'kto'"),
    (dict(objective="kto", batch=1), "batch >= 2"),
])
def test_what_is_not_modelled_is_refused_in_one_line(keys, words):
    cell = {**dict(workload="tiny-llama", method="lora", objective="dpo", batch=2), **keys}
    with pytest.raises(SuiteError) as e:
        parse_suite("[[sweep]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in cell.items()))
    assert words in str(e.value) and "\n" not in str(e.value)


def test_lamda_runs_the_objectives_without_a_reference_forward():
    for keys in (dict(objective="orpo"), dict(objective="dpo", precompute_ref_log_probs=True)):
        parse_suite("[[sweep]]\nworkload = 'tiny-llama'\nmethod = 'lamda'\n" +
                    "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items()))


# ---- trainer configs ------------------------------------------------------------------------


def _fate(t, key):
    return next(f for f in t.fates if f.key == key)


def test_llamafactory_stage_and_pref_loss():
    lf = {"model_name_or_path": "tiny-llama", "finetuning_type": "lora"}
    for stage, pref_loss, want in (("dpo", None, "dpo"), ("dpo", "orpo", "orpo"), ("dpo", "simpo", "simpo"),
                                   ("kto", None, "kto"), ("sft", None, "sft"), ("pt", None, "sft")):
        doc = {**lf, "stage": stage, **({"pref_loss": pref_loss} if pref_loss else {})}
        t = translate(doc, "x.yaml", fmt="llama-factory")
        assert _fate(t, "stage").fate == MAPPED and t.cell["objective"] == want, (stage, pref_loss)
    for doc in ({**lf, "stage": "rm"}, {**lf, "stage": "ppo"}, {**lf, "stage": "dpo", "pref_loss": "ipo"}):
        t = translate(doc, "x.yaml", fmt="llama-factory")
        assert _fate(t, "stage").fate == NOT_MODELLED and "objective" not in t.cell
        assert "not modelled" in _fate(t, "stage").note


def test_axolotl_rl():
    axo = {"base_model": "tiny-llama", "adapter": "lora", "lora_r": 4}
    for rl in ("dpo", "orpo", "kto"):
        t = translate({**axo, "rl": rl}, "x.yml")
        assert _fate(t, "rl").fate == MAPPED and t.cell["objective"] == rl
    t = translate({**axo, "rl": "simpo"}, "x.yml")
    assert _fate(t, "rl").fate == NOT_MODELLED and t.cell["objective"] == "simpo" and "cpo_alpha" in _fate(t, "rl").note
    t = translate({**axo, "rl": "simpo", "cpo_alpha": 0}, "x.yml")
    assert _fate(t, "rl").fate == MAPPED
    t = translate({**axo, "rl": "dpo", "precompute_ref_log_probs": True}, "x.yml")
    assert t.cell["precompute_ref_log_probs"] is True
    for rl in ("ipo", "grpo"):
        t = translate({**axo, "rl": rl}, "x.yml")
        assert _fate(t, "rl").fate == NOT_MODELLED and "objective" not in t.cell


def _estimate_from(path, out, capsys):
    assert cli.main(["estimate", "--from", str(path), "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    (record,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return text, ok(record)


def test_llamafactory_dpo_file_is_a_dpo_estimate_tiny():
    """The quick twin of the 8B test below, in process: the file's cell, run as `estimate --from` runs it."""
    from lamda_bench.one_cell.cell import build_cell

    dpo_t, sft_t = load(CONFIGS / "llamafactory_tiny_lora_dpo.yaml"), load(CONFIGS / "llamafactory_tiny_lora_sft.yaml")
    assert "  [mapped] stage: dpo -> objective = dpo  (pref_loss 'sigmoid': objective 'dpo')" in dpo_t.lines()
    dpo_cell, sft_cell = build_cell(dpo_t.cell), build_cell(sft_t.cell)
    dpo, sft = ok(run_cell(dpo_cell.to_dict())), ok(run_cell(sft_cell.to_dict()))
    assert dpo_cell.id != sft_cell.id and dpo["memory"]["peak"] > sft["memory"]["peak"]
    assert dpo["info"]["objective"]["reference"] == "disabled adapters"


@pytest.mark.slow
def test_llamafactory_llama3_lora_dpo_example(tmp_path, capsys):
    """The issue's done-when: LLaMA-Factory's own llama3_lora_dpo.yaml (model line on llama3.1-8b)."""
    text, dpo = _estimate_from(CONFIGS / "llamafactory_llama3_lora_dpo.yaml", tmp_path / "dpo", capsys)
    _, sft = _estimate_from(CONFIGS / "llamafactory_llama3_lora_sft.yaml", tmp_path / "sft", capsys)
    assert "[mapped] stage: dpo" in text
    assert dpo["id"] != sft["id"] and dpo["memory"]["peak"] > sft["memory"]["peak"]
    assert dpo["info"]["trace"]["mode"] == "extrapolated"  # certified to the byte at depths 3, 4, 5
