"""``kbit_prepare``: PEFT's own ``prepare_model_for_kbit_training`` on the quantized base
(``model/kbit.py``), on tiny-llama with bitsandbytes' real layers (measure) and fake kernels
(estimate). The weights are checked against a hand count from the config, not against the code's
own census."""

import json
from pathlib import Path

import pytest
import torch

from lamda_bench.suite.cell import ID_NEUTRAL_DEFAULTS, Cell
from lamda_bench.runner import run_cell

pytest.importorskip("bitsandbytes")

from lamda_bench.model import kbit  # noqa: E402
from lamda_bench.runner.build import prepare  # noqa: E402
from lamda_bench.runner.resolve import resolve  # noqa: E402

CONFIG = json.loads((Path(kbit.__file__).parent / "configs" / "tiny-llama.json").read_text())


def cell(q="nf4", mode="estimate", **kw):
    d = dict(workload="tiny-llama", method="lora", r=4, batch=2, seq=16, dtype="bf16", device="cpu", mode=mode,
             warmup=1, steps=0, quant=q)
    d.update(kw)
    return d


def ok(record):
    assert record["status"] == "ok", record["error"]
    return record


def hand_count_cast_elements() -> int:
    """Embeddings and an untied head (vocab x hidden each), two norms per block and the final one."""
    h, v, layers = CONFIG["hidden_size"], CONFIG["vocab_size"], CONFIG["num_hidden_layers"]
    assert CONFIG["tie_word_embeddings"] is False
    return 2 * v * h + h * (2 * layers + 1)


def test_the_key_leaves_every_id_and_refuses_an_unquantized_base():
    assert ID_NEUTRAL_DEFAULTS["kbit_prepare"] is False
    plain = Cell(workload="tiny-llama", method="lora", quant="nf4")
    assert Cell(workload="tiny-llama", method="lora", quant="nf4", kbit_prepare=False).id == plain.id
    assert Cell(workload="tiny-llama", method="lora", quant="nf4", kbit_prepare=True).id != plain.id
    rec = run_cell(cell(q="none", kbit_prepare=True))
    assert rec["status"] == "error" and "quantized base" in rec["error"] and "\n" not in rec["error"]
    rec = run_cell(cell(kbit_prepare="yes"))
    assert rec["status"] == "error" and "kbit_prepare" in rec["error"]


@pytest.mark.parametrize("mode", ["estimate", "measure"])
@pytest.mark.parametrize("q", ["nf4", "int8"])
def test_weights_grow_by_the_fp32_cast_as_counted_by_hand(q, mode, one_torch_thread):
    plain = ok(run_cell(cell(q, mode)))
    prepared = ok(run_cell(cell(q, mode, kbit_prepare=True)))
    extra = hand_count_cast_elements() * (4 - 2)  # bf16 -> fp32
    assert prepared["memory"]["weights"] == plain["memory"]["weights"] + extra
    assert prepared["predicted"]["memory"]["weights"] == prepared["memory"]["weights"]  # the closed form follows
    facts = prepared["info"]["kbit_prepare"]
    assert facts["applied"] and facts["function"] == "peft.prepare_model_for_kbit_training"
    assert facts["cast_to_fp32_elements"] == hand_count_cast_elements()
    assert plain["info"]["kbit_prepare"] is None


def test_peft_is_called_with_the_cells_checkpointing(monkeypatch):
    import peft

    calls = []
    real = peft.prepare_model_for_kbit_training

    def spy(model, **kwargs):
        calls.append(kwargs)
        return real(model, **kwargs)

    monkeypatch.setattr(peft, "prepare_model_for_kbit_training", spy)
    for ckpt in (False, True):
        applied, _ = prepare(resolve(Cell.from_dict(cell(kbit_prepare=True, gradient_checkpointing=ckpt)), False),
                             "meta")
        base = applied.model.get_base_model()
        assert calls[-1]["use_gradient_checkpointing"] is ckpt
        assert base.is_activation_checkpointing is ckpt
        assert base.model.embed_tokens.weight.dtype == torch.float32
        assert base.lm_head.weight.dtype == torch.float32
        assert base.model.norm.weight.dtype == torch.float32
        q = base.model.layers[0].self_attn.q_proj.base_layer.weight
        assert type(q).__name__ == "Params4bit" and q.dtype == torch.uint8  # the 4-bit weights stay
    assert len(calls) == 2


def test_the_fp32_head_logits_are_counted_as_activations(one_torch_thread):
    """The head runs in fp32 and its logits (batch x seq x vocab x 4 bytes) are activations the
    live tracker counts: the step's forward peak grows by at least the logits' extra 2 bytes each."""
    plain = ok(run_cell(cell("nf4", "measure")))
    prepared = ok(run_cell(cell("nf4", "measure", kbit_prepare=True)))
    c = Cell.from_dict(cell("nf4", "measure", kbit_prepare=True))
    applied, _ = prepare(resolve(c, False), "cpu")
    seen = {}
    head = applied.model.get_base_model().lm_head
    head.register_forward_hook(lambda m, a, out: seen.update(dtype=out.dtype))  # returns None: output kept
    from lamda_bench.model import workloads

    workloads.compute_loss(c, applied.model, workloads.make_inputs(c, "cpu"))
    assert seen["dtype"] == torch.float32
    logits_extra = c.batch * c.seq * CONFIG["vocab_size"] * 2
    grown = prepared["memory"]["saved_activations"] - plain["memory"]["saved_activations"]
    assert grown >= logits_extra
    assert prepared["memory"]["peak_forward"] - plain["memory"]["peak_forward"] >= logits_extra
