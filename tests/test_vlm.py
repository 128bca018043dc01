"""Vision-language (image-text) workloads: token rules against hand counts, bad values refused in
one line, catalogue parameter counts against the published ones, LM-only targets, tiny real VLMs
estimated and measured (agreeing to the byte), figures per owner, claim 2v and the report section."""

from __future__ import annotations

import pytest
import torch

from lamda_bench.claims import vlm_verdicts
from lamda_bench.claims.common import CANNOT
from lamda_bench.model import vlm, vlm_parts, workloads
from lamda_bench.model.config import WorkloadError
from lamda_bench.report.owners import owners_section
from lamda_bench.runner import run_cell
from lamda_bench.suite.cell import Cell, CellError


def facts(workload: str, **keys) -> dict:
    return workloads.model_facts(Cell(workload=workload, method="lora", **keys))["vlm"]


# ---- tokens per image: the architecture's rule, hand counted ------------------------------------

@pytest.mark.parametrize("workload, size, pixels, tokens", [
    ("qwen2-vl-2b", None, "448x448", 32 * 32 // 4),  # patch 14, merge 2: (448/14)^2 / 4 = 256
    ("qwen2-vl-2b", "448x672", "448x672", 32 * 48 // 4),  # 384
    ("qwen2-vl-2b", 500, "504x504", 36 * 36 // 4),  # processor rounds 500 to 18 x 28 = 504: 324
    ("qwen2-vl-2b", 20, "56x56", 4 * 4 // 4),  # below min_pixels (56 x 56): scaled up, 4 tokens
    ("llava1.5-7b", None, "336x336", 24 * 24),  # CLIP-L/14 at 336, CLS dropped: 576
    ("gemma3-4b", 896, "896x896", 256),  # mm_tokens_per_image
    ("tiny-llava", None, "56x56", 16),
])
def test_tokens_per_image(workload, size, pixels, tokens):
    f = facts(workload, image_size=size, images=2, seq=100)
    assert (f["image_size"], f["tokens_per_image"]) == (pixels, tokens)
    assert (f["text_tokens"], f["image_tokens"], f["total_tokens"]) == (100, 2 * tokens, 100 + 2 * tokens)


@pytest.mark.parametrize("workload, keys, match", [
    ("qwen2-vl-2b", {"image_size": 10}, "below one 14-pixel patch"),
    ("qwen2-vl-2b", {"image_size": "448x2"}, "below one 14-pixel patch"),
    ("llava1.5-7b", {"image_size": 448}, "takes 336x336 images only"),
    ("gemma3-4b", {"image_size": "896x448"}, "takes 896x896 images only"),
    ("qwen2-vl-2b", {"image_size": "big"}, "image_size must be pixels"),
    ("qwen2-vl-2b", {"images": 3, "seq": 6}, r"seq >= 7"),
    ("llama3.2-11b-vision", {"image_size": 700}, "image_size must be a tiled canvas"),
    ("llama3.2-11b-vision", {"image_size": "1680x1120"}, "image_size must be a tiled canvas"),  # 3x2 tiles
    ("llama3.2-11b-vision", {"vision_layers": 4}, "projector width"),
    ("llama3.2-11b-vision", {"layers": 3}, "keeps none of Mllama's cross-attention layers"),  # first is 3
    ("tiny-qwen2-vl", {"image_size": 56, "seq": 1}, r"seq >= 3"),
])
def test_bad_image_values_one_line(workload, keys, match):
    with pytest.raises(WorkloadError, match=match) as e:
        facts(workload, **keys)
    assert "\n" not in str(e.value)


def test_mllama_tiles_and_cross_attention_tokens():
    f = facts("llama3.2-11b-vision", seq=64)  # one 560 x 560 tile; 4 tile slots x (40^2 + 1 -> 1608)
    assert (f["tokens_per_image"], f["total_tokens"], f["tiles_per_image"]) == (1, 65, "1x1")
    assert (f["cross_attention_tokens_per_image"], f["cross_attention_layers"]) == (4 * 1608, 8)
    assert facts("llama3.2-11b-vision", image_size="560x1120")["tiles_per_image"] == "1x2"
    c = Cell(workload="tiny-mllama", method="lora", seq=10, images=2, image_size="112x56")
    inputs = workloads.make_inputs(c, "cpu")
    assert inputs["pixel_values"].shape == (1, 2, 4, 3, 56, 56)
    assert inputs["aspect_ratio_mask"].tolist() == [[[1, 1, 0, 0]] * 2]
    assert inputs["aspect_ratio_ids"].tolist() == [[3, 3]]  # (2, 1) is the 3rd supported canvas
    cross, ids = inputs["cross_attention_mask"], inputs["input_ids"][0]
    first, second = (ids == 256).nonzero().flatten().tolist()
    assert cross[0, :first].sum() == 0 and cross[0, first:second, 1].sum() == 0
    assert cross[0, second:, :, :2].all() and cross[0, :, :, 2:].sum() == 0


def test_images_zero_and_text_models_refused():
    with pytest.raises(CellError, match="images must be an integer >= 1"):
        Cell(workload="tiny-llava", method="lora", images=0).validate()
    with pytest.raises(WorkloadError, match="apply to image-text workloads only"):
        workloads.build_model(Cell(workload="tiny-llama", method="lora", images=1), "meta")
    with pytest.raises(WorkloadError, match="for image-text workloads"):
        model = workloads.build_model(Cell(workload="tiny-llama", method="lora"), "meta")
        workloads.resolve_targets(Cell(workload="tiny-llama", method="lora", targets="all+vision"), model)


def test_new_keys_leave_old_ids_alone():
    assert Cell(workload="tiny-llama", method="lora").id == Cell(workload="tiny-llama", method="lora", images=None).id
    assert Cell(workload="tiny-llava", method="lora").id != Cell(workload="tiny-llava", method="lora", images=2).id


# ---- catalogue: parameter counts against the model cards ------------------------------------------

@pytest.mark.parametrize("workload, published", [
    ("qwen2-vl-2b", 2_208_985_600),  # Qwen/Qwen2-VL-2B-Instruct safetensors: 2.21B
    ("llava1.5-7b", 7_063_427_072),  # llava-hf/llava-1.5-7b-hf: 7.06B
    ("gemma3-4b", 4_300_079_472),  # google/gemma-3-4b-it: 4.3B
    ("llama3.2-11b-vision", 10_670_220_835),  # meta-llama/Llama-3.2-11B-Vision: 10.7B
])
def test_catalogue_parameter_counts(workload, published):
    model = workloads.build_model(Cell(workload=workload, method="lora"), "meta")
    assert workloads.get_workload(workload).task == vlm.TASK
    assert sum(p.numel() for p in model.parameters()) == published


def test_depth_overrides():
    cfg = workloads.cell_config(Cell(workload="llava1.5-7b", method="lora", layers=3, vision_layers=5))
    assert cfg.text_config.num_hidden_layers == 3 and cfg.vision_config.num_hidden_layers == 5
    cfg = workloads.cell_config(Cell(workload="qwen2-vl-2b", method="lora", layers=2, vision_layers=4))
    assert cfg.get_text_config().num_hidden_layers == 2 and cfg.vision_config.depth == 4


# ---- targets: the language model by default ------------------------------------------------------

def test_targets_language_model_by_default_presets_add_parts():
    model = workloads.build_model(Cell(workload="tiny-llava", method="lora"), "meta")
    cell = lambda t: Cell(workload="tiny-llava", method="lora", targets=t)  # noqa: E731
    lm = workloads.resolve_targets(cell("all"), model)
    assert lm and all(vlm_parts.owner(n) == "language_model" for n in lm)
    assert len(lm) == 2 * 7  # 2 layers x q k v o gate up down
    with_vision = workloads.resolve_targets(cell("all+vision"), model)
    assert {vlm_parts.owner(n) for n in with_vision} == {"language_model", "vision"}
    assert len(with_vision) == len(lm) + 3 * 6  # 3 CLIP layers x q k v out fc1 fc2
    everything = workloads.resolve_targets(cell("all+vision+projector"), model)
    assert {vlm_parts.owner(n) for n in everything} == {"language_model", "vision", "projector"}
    gemma = workloads.build_model(Cell(workload="tiny-gemma3", method="lora"), "meta")
    with pytest.raises(WorkloadError, match="no nn.Linear in its projector"):
        workloads.resolve_targets(Cell(workload="tiny-gemma3", method="lora", targets="all+projector"), gemma)


def test_owner_names():
    assert vlm_parts.owner("model.visual.merger.mlp.0") == "projector"
    assert vlm_parts.owner("model.visual.blocks.3.attn.qkv") == "vision"
    assert vlm_parts.owner("model.vision_tower.encoder.layers.0.mlp.fc1") == "vision"
    assert vlm_parts.owner("model.multi_modal_projector.linear_1") == "projector"
    assert vlm_parts.owner("lm_head") == "language_model" == vlm_parts.owner("")  # root: the loss
    assert vlm_parts.owner("<outside>") == "outside"


# ---- inputs as the processor makes them ----------------------------------------------------------

def test_inputs_placeholders_and_labels():
    c = Cell(workload="tiny-qwen2-vl", method="lora", batch=2, seq=40, images=2, image_size="112x168")
    inputs = workloads.make_inputs(c, "cpu")
    per_image = (112 // 14) * (168 // 14) // 4  # 24
    ids, labels = inputs["input_ids"], inputs["labels"]
    assert ids.shape == (2, 40 + 2 * per_image)
    assert ((ids == 254).sum(dim=1) == 2 * per_image).all()
    assert ((ids == 251).sum(dim=1) == 2).all() and ((ids == 252).sum(dim=1) == 2).all()  # markers
    assert (labels[ids == 254] == -100).all() and (labels[ids != 254] == ids[ids != 254]).all()
    assert inputs["image_grid_thw"].tolist() == [[1, 8, 12]] * 4
    assert inputs["pixel_values"].shape == (4 * 8 * 12, 3 * 2 * 14 * 14)
    assert inputs["position_ids"].shape == (3, 2, 40 + 2 * per_image)  # 3-D rope, by the model's get_rope_index


# ---- tiny real VLMs: estimate vs measurement, owners, claim 2v, report ----------------------------

def _run(workload: str, mode: str, **keys) -> dict:
    base = dict(workload=workload, method="lora", mode=mode, device="cpu", dtype="fp32", batch=1, seq=24,
                steps=0, warmup=0)
    base.update(keys)
    rec = run_cell(Cell(**base).to_dict())
    assert rec["status"] == "ok", rec.get("error")
    return rec


@pytest.mark.parametrize("workload, keys", [("tiny-llava", {}), ("tiny-gemma3", {}),
                                           ("tiny-mllama", {"images": 2, "image_size": "56x112"}),
                                           ("tiny-qwen2-vl", {"images": 2, "image_size": "56x84"})])
def test_estimate_agrees_with_measurement_to_the_byte(workload, keys):
    est, meas = _run(workload, "estimate", **keys), _run(workload, "measure", **keys)
    for key in ("peak", "saved_activations", "saved_activations_adapter"):
        assert est["memory"][key] == meas["memory"][key], key
    assert {k: est["flops"][k] for k in ("forward", "backward")} == {k: meas["flops"][k] for k in ("forward", "backward")}
    assert est["info"]["vlm_owners"] == meas["info"]["vlm_owners"]


@pytest.fixture(scope="module")
def llava_pair():
    return [_run("tiny-llava", "estimate", method=m, warmup=2) for m in ("lora", "lamda")]


def test_owners_split_and_frozen_tower(llava_pair):
    lora = llava_pair[0]
    owners = lora["info"]["vlm_owners"]
    assert sum(owners["saved_bytes"].values()) == lora["memory"]["saved_activations"]
    assert owners["saved_bytes"]["vision"] == 0  # frozen tower, input needs no grad: nothing saved
    assert owners["flops"]["vision"] > 0 and owners["flops"]["projector"] > 0
    assert owners["saved_bytes"]["adapter"] == lora["memory"]["saved_activations_adapter"]
    tuned = _run("tiny-llava", "estimate", targets="all+vision")["info"]["vlm_owners"]
    checkpointed = _run("tiny-llava", "estimate", targets="all+vision", gradient_checkpointing=True)["info"]["vlm_owners"]
    assert tuned["saved_bytes"]["vision"] > checkpointed["saved_bytes"]["vision"] > 0
    assert checkpointed["flops"]["vision"] > tuned["flops"]["vision"]  # recomputation


def test_claim_2v_and_report_section(llava_pair):
    row = vlm_verdicts.claim_vlm_activations(llava_pair)
    assert row.key == "2v" and row.verdict != CANNOT
    assert "vision tower" in row.measured
    assert vlm_verdicts.claim_vlm_activations([]).verdict == CANNOT
    import copy

    tower_adapted = copy.deepcopy(llava_pair)
    for rec in tower_adapted:
        rec["cell"]["targets"] = "all+vision"
    assert vlm_verdicts.claim_vlm_activations(tower_adapted).verdict == CANNOT  # the claim is the LM's
    lines = owners_section(llava_pair)
    assert lines[0].startswith("## Vision-language cells")
    assert len([x for x in lines if x.startswith("| tiny-llava")]) == 2


def test_qwen2_vl_estimate_runs_with_rope_positions():
    rec = _run("tiny-qwen2-vl", "estimate", image_size=56)
    assert rec["info"]["model"]["vlm"]["tokens_per_image"] == 4
    assert rec["info"]["vlm_owners"]["flops"]["vision"] > 0
    assert torch.tensor(rec["memory"]["peak"]) > 0


def test_lamda_loss_is_the_language_models(llava_pair):
    for rec in llava_pair:  # LaMDA adapts the bare model: its root runs the loss
        saved = rec["info"]["vlm_owners"]["saved_bytes"]
        assert saved["outside"] == 0 and saved["language_model"] > 0


@pytest.mark.slow
def test_fit_answers_for_a_vlm_with_images(tmp_path):
    import json

    from lamda_bench import cli

    code = cli.main(["fit", "--workload", "tiny-llava", "--method", "lora", "--budget", "72MiB", "--seq", "32",
                     "--set", "images=2", "--set", "dtype=fp32", "--set", "device=cpu", "--out", str(tmp_path),
                     "--jobs", "1", "--no-progress"])
    assert code == 0
    rows = json.loads((tmp_path / "fit.json").read_text())
    row, = rows
    assert row["verdict"] == "certified" and row["max_batch"] >= 1
    assert row["peak_at_max"] + row["margin"] <= row["budget"] < row["peak_at_next"] + row["margin"]
    probes = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert all(p["info"]["model"]["vlm"]["image_tokens"] == 32 for p in probes)  # 2 images x 16 tokens


QWEN25 = {  # a tiny Qwen2.5-VL config.json given by path (windowed vision attention, as the user had)
    "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
    "hidden_size": 64, "intermediate_size": 176, "num_attention_heads": 4, "num_hidden_layers": 2,
    "num_key_value_heads": 2, "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
    "tie_word_embeddings": True, "vocab_size": 256, "vision_start_token_id": 251, "vision_end_token_id": 252,
    "vision_token_id": 253, "image_token_id": 254, "video_token_id": 255,
    "vision_config": {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "in_chans": 3,
                      "out_hidden_size": 64, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
                      "window_size": 56, "fullatt_block_indexes": [1]},
}


def test_qwen25_vl_config_path_estimate_agrees_with_measurement(tmp_path):
    import json

    path = tmp_path / "config.json"
    path.write_text(json.dumps(QWEN25))
    est, meas = (_run(str(path), m, image_size=112, images=2) for m in ("estimate", "measure"))
    assert est["info"]["model"]["vlm"]["tokens_per_image"] == 16  # (112/14)^2 / 4
    for key in ("peak", "saved_activations", "saved_activations_adapter"):
        assert est["memory"][key] == meas["memory"][key], key


def test_estimate_output_says_what_the_images_became():
    from lamda_bench.one_cell.output import describe

    rec = _run("tiny-llava", "estimate", images=2)
    text = describe(rec, False, "x")
    assert "images: 2 per sample at 56x56, 16 tokens each; per sample 24 text + 32 image = 56 tokens" in text
