"""Activation offloading (cell key ``offload_activations``, model/offload.py): the saved tensors
TRL's OffloadActivations would offload leave the device in forward and are counted as host memory
(``memory.host_offloaded_peak``); measure equals estimate to the byte, the device peak drops, the
gradients are the same, and a cell without the key keeps its id."""

from __future__ import annotations

import pytest
import torch

from lamda_bench.methods import AdapterSpec, get_method
from lamda_bench.model import offload, workloads
from lamda_bench.runner import run_cell
from lamda_bench.runner.build import enable_checkpointing
from lamda_bench.suite.cell import Cell, CellError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ID_BEFORE = "tiny-llama-lora-r8-e1258d0bcfc1"  # Cell(workload="tiny-llama", method="lora").id before the key
FIELDS = ("weights", "grads", "optimizer", "saved_activations", "peak_forward", "peak_backward", "peak_step",
          "peak", "at_peak", "peak_steady", "host_offloaded_peak")


def ok(record):
    assert record["status"] == "ok", record["error"]
    return record


def _cell(**kw):
    return dict(workload="tiny-llama", method="lora", r=4, batch=2, seq=16, dtype="fp32", device="cpu",
                mode="measure", warmup=1, steps=1, **kw)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_measure_equals_estimate_and_the_device_peak_drops(checkpointing):
    # With checkpointing, eager attention: under SDPA transformers drops the causal mask when the real
    # mask is all ones, which fake tensors cannot tell, and checkpointing keeps that mask for backward
    # (a 512 B difference that is not offloading's).
    extra = dict(gradient_checkpointing=True, attn_implementation="eager") if checkpointing else {}
    cell = _cell(offload_activations=True, **extra)
    real = ok(run_cell(cell))
    fake = ok(run_cell({**cell, "mode": "estimate"}))
    for key in FIELDS:
        assert real["memory"][key] == fake["memory"][key], key
    assert real["info"]["offload_activations"] == fake["info"]["offload_activations"]
    info = fake["info"]["offload_activations"]
    assert info["offloaded_tensors"] > 0 and info["output_head_kept"] == "lm_head"
    # every host copy is alive at the end of forward: the host peak is what forward copied out
    assert fake["memory"]["host_offloaded_peak"] == info["offloaded_bytes"] > 0
    assert info["host_link_bytes_per_step"] == 2 * info["offloaded_bytes"]
    # the saved bytes are what forward saved, offloaded or not; nothing is called a dropped graph
    plain = ok(run_cell({**cell, "offload_activations": False}))
    assert plain["memory"]["saved_activations"] == real["memory"]["saved_activations"]
    assert "saved_discarded" not in real["memory"] and "host_offloaded_peak" not in plain["memory"]
    if not checkpointing:  # checkpointed, the offloaded block inputs are a few KiB; the copies back cost as much
        assert real["memory"]["peak"] < plain["memory"]["peak"]
        assert real["memory"]["peak_backward"] < plain["memory"]["peak_backward"]
        # the device gives up at least the offloaded bytes that stay offloaded through forward's end
        assert plain["memory"]["at_peak"]["activations"] - real["memory"]["at_peak"]["activations"] > 0


def test_a_preference_step_offloads_its_policy_forward_and_equals_its_estimate():
    """DPO with offloading (model/objective.py inside the offloaded forward): the policy forward's
    saves go to host, the reference forward under no_grad saves nothing to offload."""
    cell = _cell(offload_activations=True, objective="dpo")
    real = ok(run_cell(cell))
    fake = ok(run_cell({**cell, "mode": "estimate"}))
    for key in FIELDS:
        assert real["memory"][key] == fake["memory"][key], key
    plain = ok(run_cell({**cell, "offload_activations": False}))
    assert 0 < fake["memory"]["host_offloaded_peak"] and real["memory"]["peak"] < plain["memory"]["peak"]
    assert fake["info"]["objective"]["reference"] == "disabled adapters"


def _model(checkpointing: bool):
    cell = Cell(workload="tiny-llama", method="lora", dtype="fp32", device="cpu", batch=2, seq=16)
    torch.manual_seed(0)
    model = workloads.build_model(cell, "cpu")
    if checkpointing:
        enable_checkpointing(model, cell.workload)
    targets = workloads.resolve_targets(cell, model)
    model = get_method("lora").apply(model, AdapterSpec(r=4, alpha=8.0, targets=targets, dtype=torch.float32)).model
    for p in model.parameters():  # lora_B starts at zero: give the adapters something to pass on
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.1)
    return cell, model


@pytest.mark.parametrize("checkpointing", [False, True])
def test_gradients_equal_the_run_without_offloading(checkpointing):
    cell, model = _model(checkpointing)
    model.train()
    inputs = workloads.make_inputs(cell, "cpu")
    grads = {}
    for on in (False, True):
        ctx = offload.step_context(Cell(**{**cell.__dict__, "offload_activations": on}), model, inputs)
        with ctx as offloader:
            loss = workloads.compute_loss(cell, model, inputs)
        loss.backward()
        grads[on] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
        model.zero_grad(set_to_none=True)
        if on:
            assert offloader.offloaded_tensors > 0
    (l0, g0), (l1, g1) = grads[False], grads[True]
    assert torch.equal(l0, l1) and g0.keys() == g1.keys() and g0
    for name in g0:
        assert torch.equal(g0[name], g1[name]), name


def test_offloader_chains_to_the_hooks_outside_it():
    """The harness's saved-tensor tracker sits outside: it must still see every saved tensor."""
    seen = []
    x = torch.randn(64, 64, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: seen.append(t.shape) or t, lambda t: t):
        with offload.Offloader(torch.nn.Linear(1, 1), torch.device("cpu")) as off:
            y = (x * x.sin()).sum()
    y.backward()
    # sin saves x, mul saves x and sin(x): x and sin(x) offloaded (16 KiB each), x's second save kept
    assert len(seen) == 3 and off.offloaded_tensors == 2 and off.kept["duplicates"] == 1
    assert torch.allclose(x.grad, x.sin() * 1 + x * x.cos())


def test_small_tensors_parameters_and_duplicates_stay_on_the_device():
    lin = torch.nn.Linear(32, 32, bias=False)  # weight 4 KiB: saved as a view of a parameter
    lin.weight.requires_grad_(False)
    x = torch.randn(16, 32, requires_grad=True)  # 2 KiB
    small = torch.randn(4, requires_grad=True)  # 16 B
    with offload.Offloader(lin, torch.device("cpu")) as off:
        a = torch.nn.functional.linear(x, lin.weight)  # saves the weight's view only (x needs no saving)
        b = x * x  # saves x twice: once offloaded, once kept as a duplicate
        c = small * small
    (a.sum() + b.sum() + c.sum()).backward()
    assert off.kept["parameters"] == 1 and off.kept["small"] == 2
    assert off.kept["duplicates"] == 1 and off.offloaded_tensors == 1 and off.offloaded_bytes == 16 * 32 * 4


def test_default_cell_id_is_unchanged_and_bad_values_are_one_line():
    cell = Cell(workload="tiny-llama", method="lora")
    assert cell.id == ID_BEFORE
    assert Cell(workload="tiny-llama", method="lora", offload_activations=False).id == cell.id
    assert Cell(workload="tiny-llama", method="lora", offload_activations=True).id != cell.id
    key, line = Cell(workload="tiny-llama", method="lora", offload_activations="yes").problem()
    assert key == "offload_activations" and "\n" not in line
    with pytest.raises(CellError):
        Cell(workload="tiny-llama", method="lora", offload_activations=1).validate()
    key, line = Cell(workload="tiny-llama", method="lora", offload_activations=True, world_size=2,
                     parallel="fsdp2").problem()
    assert key == "offload_activations" and "not modelled" in line


def test_suite_value_check_is_one_line(tmp_path):
    from lamda_bench.suite.parse import load_suite
    from lamda_bench.errors import UserError

    path = tmp_path / "s.toml"
    path.write_text('[suite]\nname = "s"\n[[sweep]]\nworkload = "tiny-llama"\nmethod = "lora"\n'
                    'offload_activations = "yes"\n')
    with pytest.raises(UserError) as e:
        load_suite(path)
    assert "offload_activations" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.slow
@pytest.mark.parametrize("checkpointing", [False, True])
def test_depth_extrapolation_certifies_the_host_bytes(checkpointing):
    cell = dict(workload="tiny-llama", method="lora", r=4, batch=2, seq=16, dtype="bf16", device="cpu",
                mode="estimate", warmup=1, steps=1, layers=16, offload_activations=True,
                gradient_checkpointing=checkpointing)
    probed = ok(run_cell(cell))
    full = ok(run_cell({**cell, "trace": "full"}))
    assert probed["info"]["trace"]["mode"] == "extrapolated"
    assert probed["memory"] == full["memory"]
    assert probed["info"]["offload_activations"] == full["info"]["offload_activations"]


# ---- trainer configs ------------------------------------------------------------------------


def _fate(t, key):
    return next(f for f in t.fates if f.key == key)


def test_trainer_configs_map_activation_offloading_to_the_key():
    from lamda_bench.trainer_config import translate
    from lamda_bench.trainer_config.fate import MAPPED, NO_EFFECT, NOT_MODELLED

    full = {"base_model": "tiny-llama"}
    t = translate({**full, "activation_offloading": "legacy"}, "x.yml")  # single stream, no adapter: what is modelled
    assert _fate(t, "activation_offloading").fate == MAPPED and t.cell["offload_activations"] is True
    t = translate({**full, "activation_offloading": True}, "x.yml")  # CUDA streams: mapped, the stash named
    fate = _fate(t, "activation_offloading")
    assert fate.fate == MAPPED and "up to 5" in fate.note and t.cell["offload_activations"] is True
    lora = {**full, "adapter": "lora", "lora_r": 4}
    t = translate({**lora, "activation_offloading": True}, "x.yml")  # PEFT path: no parameter filter in axolotl
    fate = _fate(t, "activation_offloading")
    assert fate.fate == NOT_MODELLED and "parameter storages" in fate.note and t.cell["offload_activations"] is True
    for value in ("disk", "hidden_states"):
        t = translate({**lora, "activation_offloading": value}, "x.yml")
        assert _fate(t, "activation_offloading").fate == NOT_MODELLED and "offload_activations" not in t.cell
    t = translate({**lora, "activation_offloading": False}, "x.yml")
    assert _fate(t, "activation_offloading").fate == NO_EFFECT and "offload_activations" not in t.cell
    # TRL's SFTConfig (the HF TrainingArguments reader): get_act_offloading_ctx_manager, streams
    t = translate({"per_device_train_batch_size": 2, "activation_offloading": True}, "x.json")
    assert _fate(t, "activation_offloading").fate == MAPPED and t.cell["offload_activations"] is True


# ---- fit --advise ---------------------------------------------------------------------------


def test_fit_advise_offers_offloading_with_its_host_costs(tmp_path, capsys):
    import json

    from lamda_bench import cli
    from lamda_bench.fit.budgets import WORKSPACE_BYTES
    from lamda_bench.fit.levers import LEVERS

    lever = LEVERS["offload_activations"]
    assert lever.host_cost and not lever.monotone and "host RAM" in lever.caveat
    assert lever.steps(Cell(workload="tiny-llama", method="lora", offload_activations=True)) == []
    cell = dict(workload="tiny-llama", method="lora", r=8, seq=64, mode="estimate")
    base = ok(run_cell(cell))
    off = ok(run_cell({**cell, "offload_activations": True}))
    usable = (base["memory"]["peak"] + off["memory"]["peak"]) // 2
    code = cli.main(["fit", "--workload", "tiny-llama", "--method", "lora", "--seq", "64", "--out", str(tmp_path),
                     "--no-progress", "--budget", str(WORKSPACE_BYTES + usable), "--levers", "offload_activations"])
    out = capsys.readouterr().out
    adv = json.loads((tmp_path / "fit.json").read_text())[0]["advice"]
    assert code == 0 and adv["verdict"] == "fits"
    row, = adv["fitting"]
    host, info = row["host_costs"], off["info"]["offload_activations"]
    assert row["changes"] == {"offload_activations": True} and row["peak"] == off["memory"]["peak"]
    assert "host_ram" in row["measured_costs"] and row["caveats"].keys() == {"offload_activations"}
    assert host["host_ram_bytes"] == off["memory"]["host_offloaded_peak"] > 0
    assert host["host_link_bytes_per_step"] == info["host_link_bytes_per_step"] == 2 * info["offloaded_bytes"]
    assert host["host_link_s_serial"] is None  # no card: no link rate
    assert "#1: host RAM" in out and "host-link traffic" in out


def test_with_a_card_the_host_link_is_priced_at_its_datasheet_rate():
    from lamda_bench.card.rates import HOST_LINK, RATES, host_link_for
    from lamda_bench.fit.advise import Outcome, host_costs

    assert set(HOST_LINK) == set(RATES)  # every card with a time model has a link rate
    assert host_link_for("h100-80gb") == HOST_LINK["H100-80GB"] and HOST_LINK["H100-80GB"][0] == 64e9
    cell = Cell(workload="tiny-llama", method="lora", offload_activations=True)
    o = Outcome((1,), cell, {"offload_activations": True}, 10, 10, True,
                host={"host_ram_bytes": 2**30, "host_link_bytes_per_step": 2**31})
    cost = host_costs(o, "RTX4090-24GB")
    assert cost["host_link_s_serial"] == pytest.approx(2**31 / 32e9) and "PCIe Gen4" in cost["host_link_source"]
    assert host_costs(Outcome((0,), cell, {}, 10, 10, False), "RTX4090-24GB") is None


def test_the_time_model_prices_the_copies_at_the_host_link_rate():
    from lamda_bench.card.step_time import op_cost
    from lamda_bench.card.rates import rates_for

    op = {"kind": "host_link", "bytes_read": 2**30, "bytes_written": 2**30, "count": 1, "flops": 0, "dtype": "bfloat16"}
    assert op_cost(op, rates_for("H100-80GB"))["memory"] == pytest.approx(2**30 / 64e9)
    rec = ok(run_cell(dict(workload="tiny-llama", method="lora", r=8, seq=64, mode="estimate", card="H100-80GB",
                           offload_activations=True)))
    link = rec["info"]["time_model"]["by_kind_s"]["host_link"]
    assert link >= rec["info"]["offload_activations"]["host_link_bytes_per_step"] / 64e9 > 0
    assert any("host-link copies" in n for n in rec["info"]["time_model"]["not_modelled"])
