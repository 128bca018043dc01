"""Fuzzing the trainer-config readers and the ``--set`` parser (issue 45): whatever the bytes, the
answer is a value or one UserError line, in bounded time; never another exception, never a hang.

Hypothesis runs with a fixed seed (``derandomize``) and a bounded example count, so the quick set
stays quick and a failure reproduces.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")  # in the test extra and the lock; importorskip names it if absent
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from lamda_bench.errors import UserError  # noqa: E402
from lamda_bench.suite.parse import parse_override  # noqa: E402
from lamda_bench.trainer_config import FORMATS, axolotl, hf_args, llamafactory, load, peft_adapter  # noqa: E402

PER_EXAMPLE_S = 20.0  # generous for a loaded 2-core machine; the bounded reader takes milliseconds
FUZZ = settings(max_examples=40, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

KEYS = sorted({*axolotl.MAPPED_KEYS, *axolotl.NO_EFFECT, *axolotl.NOT_MODELLED, *llamafactory.NO_EFFECT,
               *llamafactory.NOT_MODELLED, *hf_args.NO_EFFECT, *hf_args.NOT_MODELLED,
               "model_name_or_path", "finetuning_type", "lora_rank", "lora_target", "cutoff_len", "quantization_bit",
               "peft_type", "r", "target_modules", "base_model_name_or_path", "lora_alpha", "optim", "attn",
               "attention", "flash_attn", "pure_bf16", "quantization_method", "per_device_train_batch_size"})
MODELS = ["tiny-llama", "tiny-mixtral", "linear", "no-such-model", "", "Qwen/NoSuch-0B"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(MODELS + ["all", "all-linear", "lora", "qlora", "nf4",
                                                                    "fa2", "sdpa", "bnb", "paged_adamw_8bit"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                      max_leaves=12)
documents = st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=10)), values, max_size=10)


def within_bounds(call):
    """``call()`` returns or raises a UserError, within PER_EXAMPLE_S."""
    start = time.monotonic()
    try:
        call()
    except UserError as e:
        assert "\n" not in str(e).strip(), str(e)
    assert time.monotonic() - start < PER_EXAMPLE_S


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@FUZZ
@given(doc=documents, model=st.sampled_from(MODELS), as_json=st.booleans(), fmt=st.sampled_from([None, *FORMATS]))
def test_structured_configs(tmp_path, doc, model, as_json, fmt):
    import yaml

    doc = {"base_model": model, "model_name_or_path": model, **doc}
    text = json.dumps(doc, default=str) if as_json else yaml.safe_dump(doc, allow_unicode=True)
    path = write(tmp_path, "c.json" if as_json else "c.yml", text.encode("utf-8"))
    within_bounds(lambda: load(path, fmt))
    within_bounds(lambda: peft_adapter.translate(doc, "x", tmp_path))


yaml_bits = st.sampled_from(["a: &a [1, 2]\n", "b: *a\n", "c: &c [*c]\n", "- x\n", "[", "]", "{", "}", ": ",
                             "<<: *a\n", "!!python/object:os.system\n", "? k\n", "--- \n", "...\n", "\t", "'",
                             '"', "#", "&x ", "*x ", "9" * 5000, "2024-13-45", "\ufeff", "\x00", "lora_r: 8\n",
                             "base_model: tiny-llama\n", "adapter: lora\n", "  nested:\n    - 1\n"])


@FUZZ
@given(parts=st.lists(st.one_of(yaml_bits, st.text(max_size=20)), max_size=30))
def test_raw_text(tmp_path, parts):
    path = write(tmp_path, "raw.yml", "".join(parts).encode("utf-8", "surrogatepass"))
    within_bounds(lambda: load(path))


def laughs(fanout: int, depth: int) -> str:
    lines = ["a0: &a0 [" + ", ".join(['"lol"'] * fanout) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * fanout) + "]" for i in range(1, depth)]
    return "base_model: tiny-llama\n" + "\n".join(lines) + "\n"


hostile_texts = st.one_of(
    st.integers(1, 6000).map(lambda n: "base_model: tiny-llama\nx: " + "[" * n + "]" * n + "\n"),
    st.integers(1, 6000).map(lambda n: '{"base_model": "tiny-llama", "x": ' + "[" * n + "]" * n + "}"),
    st.integers(1, 3000).map(lambda n: "x: " + "{a: " * n + "1" + "}" * n + "\n"),
    st.builds(laughs, st.integers(1, 12), st.integers(1, 12)),
    st.sampled_from(["x: &x [1, *x]\n", "x: &x {a: *x}\n", "a: &a [1]\nb: &b [*a, *b]\n"]),
    st.integers(1, 9000).map(lambda n: "lora_r: " + "9" * n + "\n"),
)


@FUZZ
@given(text=hostile_texts)
def test_hostile_shapes(tmp_path, text):
    path = write(tmp_path, "hostile.yml", text.encode("utf-8"))
    within_bounds(lambda: load(path))


@FUZZ
@given(data=st.binary(max_size=200))
def test_raw_bytes(tmp_path, data):
    path = write(tmp_path, "raw.bin", data)
    within_bounds(lambda: load(path))


@FUZZ
@given(text=st.one_of(st.text(max_size=40), st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS + ["r", "seq"]),
                                                       st.text(max_size=30))))
def test_set_parser(text):
    within_bounds(lambda: parse_override(text))
