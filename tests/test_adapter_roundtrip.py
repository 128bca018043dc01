"""Issue 43: every key an adapter_config.json maps ([mapped]) trains what PEFT trains: the cell it
becomes estimates PEFT's own trainable count, on a tiny model, through the real get_peft_model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lamda_bench.model.workloads import build_model
from lamda_bench.one_cell.cell import build_cell
from lamda_bench.runner import run_cell
from lamda_bench.suite.cell import Cell
from lamda_bench.trainer_config import peft_adapter
from lamda_bench.trainer_config.fate import MAPPED

EXPERTS = ["experts.gate_up_proj", "experts.down_proj"]
DOCS = {
    "list": ("tiny-llama", {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}),
    "all-linear": ("tiny-llama", {"peft_type": "LORA", "r": 2, "target_modules": "all-linear", "lora_dropout": 0.1}),
    "peft default": ("tiny-llama", {"peft_type": "LORA", "r": 3, "target_modules": None}),
    "dora": ("tiny-llama", {"peft_type": "LORA", "r": 2, "use_dora": True, "target_modules": ["o_proj", "up_proj"]}),
    "pissa": ("tiny-llama", {"peft_type": "LORA", "r": 2, "init_lora_weights": "pissa", "target_modules": ["k_proj"]}),
    "vera": ("tiny-llama", {"peft_type": "VERA", "r": 8, "target_modules": ["q_proj", "v_proj"],
                            "projection_prng_key": 0, "d_initial": 0.1}),
    "experts": ("tiny-mixtral", {"peft_type": "LORA", "r": 2, "target_parameters": EXPERTS}),
    "all+experts": ("gpt-oss", {"peft_type": "LORA", "r": 2, "target_modules": "all-linear",
                                "target_parameters": EXPERTS}),
}
PUBLISHED = Path(__file__).parent / "published_configs"


def tiny_gpt_oss(tmp_path: Path) -> str:
    """gpt-oss-20b's published config.json at small sizes (its mxfp4 quantization_config left out:
    a bf16 checkpoint's shape, which is what PEFT wraps once transformers dequantized it)."""
    config = json.loads((PUBLISHED / "gpt-oss-20b.json").read_text())
    config.pop("quantization_config")
    config.update(hidden_size=32, intermediate_size=16, head_dim=8, num_attention_heads=4, num_key_value_heads=2,
                  num_local_experts=4, num_experts_per_tok=2, vocab_size=128, pad_token_id=0,
                  eos_token_id=1)
    path = tmp_path / "gpt-oss.json"
    path.write_text(json.dumps(config))
    return str(path)


def peft_trainable(workload: str, doc: dict) -> int:
    import peft

    model = build_model(Cell(workload=workload, method="lora", layers=2, dtype="fp32"), "cpu")
    wrapped = peft.get_peft_model(model, peft.get_peft_config(dict(doc)))
    return sum(p.numel() for p in wrapped.parameters() if p.requires_grad)


@pytest.mark.parametrize("case", sorted(DOCS))
def test_mapped_keys_train_what_peft_trains(case, tmp_path):
    workload, doc = DOCS[case]
    workload = tiny_gpt_oss(tmp_path) if workload == "gpt-oss" else workload
    t = peft_adapter.translate(doc, "adapter_config.json", tmp_path, with_model=False)
    assert t.caveats() == [], [f.line() for f in t.caveats()]
    keys = dict(workload=workload, layers=2, dtype="fp32", device="cpu", batch=1, seq=8, warmup=0, steps=0,
                method="lora")
    keys.update(t.cell)
    rec = run_cell(build_cell(keys).to_dict())  # the estimate command's own path from keys to a cell
    assert rec["status"] == "ok", rec["error"]
    assert rec["params"]["trainable"] == peft_trainable(workload, doc)


def test_layer_specific_target_parameters_are_not_mapped(tmp_path):
    # the gpt-oss fine-tuning recipe: all-linear, plus the experts of layers 7, 15 and 23 only
    layers = [f"model.layers.{i}.mlp.experts.{p}" for i in (7, 15, 23) for p in ("gate_up_proj", "down_proj")]
    doc = {"peft_type": "LORA", "r": 8, "target_modules": "all-linear", "target_parameters": layers}
    t = peft_adapter.translate(doc, "adapter_config.json", tmp_path, with_model=False)
    assert t.cell["targets"] == "all"  # the linears only: what the estimate trains
    fates = {f.key: f for f in t.fates}
    assert fates["target_parameters"].fate != MAPPED and fates["target_modules"].cell == (("targets", "all"),)
    assert "target_parameters" in t.headline()


@pytest.mark.parametrize("targets", ["all-linear", ["q_proj", "w1"]])
def test_what_peft_rewrites_on_a_moe_model_is_refused(targets, tmp_path):
    # PEFT 0.21 on transformers 5 turns Mixtral's w1/w2/w3/gate (and all-linear) into expert and router
    # target_parameters: the cell would train the linears only, so the mapping is refused in one line
    from lamda_bench.trainer_config.fate import TrainerConfigError

    t = peft_adapter.translate({"peft_type": "LORA", "r": 2, "target_modules": targets}, "a.json", tmp_path,
                               with_model=False)
    with pytest.raises(TrainerConfigError, match="rewrites") as e:
        peft_adapter.check_peft_rewrite(t, "mixtral")
    assert "\n" not in str(e.value)
    peft_adapter.check_peft_rewrite(t, "llama")  # nothing rewritten on a dense model


def test_workload_flag_beside_an_adapter_wins_over_its_base_model(tmp_path):
    # the adapter names a hub model that is not cached: --workload names the model, so it is not read
    from lamda_bench import cli
    from lamda_bench.one_cell.cli import gather_keys

    adapter = tmp_path / "adapter_config.json"
    adapter.write_text(json.dumps({"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"],
                                   "base_model_name_or_path": "some-org/not-cached-model-7b"}))
    args = cli.build_parser().parse_args(["estimate", "--adapter", str(adapter), "--workload", "tiny-llama",
                                          "--seq", "16"])
    keys, translation = gather_keys(args)
    assert keys["workload"] == "tiny-llama" and keys["r"] == 4
    base = next(f for f in translation.fates if f.key == "base_model_name_or_path")
    assert base.fate != MAPPED and "--workload" in base.note
