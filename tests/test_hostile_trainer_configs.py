"""Trainer-config mappings that were wrong (issue 45, case 6): each key's fate as the trainer reads it."""

from __future__ import annotations

from pathlib import Path

import pytest

from lamda_bench.trainer_config import translate
from lamda_bench.trainer_config.fate import MAPPED, NO_EFFECT, NOT_MODELLED


def fates(doc: dict, fmt: str) -> dict:
    t = translate(doc, "x.yml", fmt, Path.cwd())
    return t, {f.key: f for f in t.fates}


def test_axolotl_without_an_adapter_key_is_full_fine_tuning():
    t, _ = fates({"base_model": "tiny-llama", "sequence_len": 32}, "axolotl")
    assert t.cell["method"] == "full"


def test_llamafactory_bitsandbytes_quantization_method_is_mapped():
    doc = {"model_name_or_path": "tiny-llama", "quantization_bit": 4, "quantization_method": "bitsandbytes"}
    t, by_key = fates(doc, "llama-factory")
    assert t.cell["quant"] == "nf4-dq"
    assert by_key["quantization_method"].fate == MAPPED and not t.caveats()


def test_llamafactory_other_quantization_method_is_not_modelled():
    doc = {"model_name_or_path": "tiny-llama", "quantization_bit": 4, "quantization_method": "gptq"}
    _, by_key = fates(doc, "llama-factory")
    assert by_key["quantization_method"].fate == NOT_MODELLED


@pytest.mark.parametrize("fmt, doc, key, fate, cell", [
    ("llama-factory", {"pure_bf16": False}, "pure_bf16", NO_EFFECT, None),
    ("llama-factory", {"flash_attn": "fa2"}, "flash_attn", NOT_MODELLED, None),
    ("llama-factory", {"attn": "fa2"}, "attn", NOT_MODELLED, None),
    ("llama-factory", {"attn": "sdpa"}, "attn", MAPPED, "sdpa"),
    ("llama-factory", {"flash_attn": "disabled"}, "flash_attn", MAPPED, "eager"),
    ("llama-factory", {"include_mfu": True}, "include_mfu", NO_EFFECT, None),
    ("axolotl", {"attention": "flash"}, "attention", NOT_MODELLED, None),
    ("axolotl", {"attention": "sdpa"}, "attention", MAPPED, "sdpa"),
    ("axolotl", {"include_mfu": True}, "include_mfu", NO_EFFECT, None),
])
def test_keys_that_were_unknown(fmt, doc, key, fate, cell):
    model = {"axolotl": {"base_model": "tiny-llama"}, "llama-factory": {"model_name_or_path": "tiny-llama"}}[fmt]
    t, by_key = fates({**model, **doc}, fmt)
    assert by_key[key].fate == fate, by_key[key].line()
    if cell:
        assert t.cell["attn_implementation"] == cell


# Found by test_hostile_fuzz.py: a list or a mapping where the reader looked a name up in a table
# (or doubled the rank for LLaMA-Factory's default alpha) raised TypeError, or doubled a list.
@pytest.mark.parametrize("fmt, key", [("llama-factory", "finetuning_type"), ("llama-factory", "stage"),
                                      ("llama-factory", "pref_loss"), ("llama-factory", "lora_rank"),
                                      ("axolotl", "rl")])
@pytest.mark.parametrize("value", [[], ["dpo"], {}, {"a": 1}])
def test_a_list_or_mapping_where_a_name_is_read_is_a_user_error_or_a_fate(fmt, key, value):
    from lamda_bench.errors import UserError

    doc = {"model_name_or_path": "tiny-llama", "base_model": "tiny-llama", "stage": "dpo", key: value}
    try:
        t, by_key = fates(doc, fmt)
    except UserError as e:
        assert "\n" not in str(e) and key in str(e)
        return
    assert by_key[key].fate in (MAPPED, NO_EFFECT, NOT_MODELLED)
    assert "alpha" not in t.cell or isinstance(t.cell["alpha"], (int, float))  # never 2 x a list
