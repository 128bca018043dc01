"""Method facts live on the registered Method; the suite, analytic/, reports and claims read them."""

import copy
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

from lamda_bench import analytic as A
from lamda_bench.analytic import AdaptedLinear
from lamda_bench.claims.common import is_plain_lamda
from lamda_bench.methods import REGISTRY, all_methods, get_method
from lamda_bench.methods.base import AdapterSpec, Method, MethodError
from lamda_bench.methods.lamda.layer import DEFAULT_FREEZE_FRACTION, DEFAULT_FREEZE_MODE, FreezeSchedule, find_targets
from lamda_bench.report.records import method_label
from lamda_bench.model.targets import target_linears


def test_every_registered_method_has_a_closed_form_family():
    families = {name: m.family for name, m in all_methods().items()}
    assert families == {"full": "full", "lora": "lora", "pissa": "lora", "lora-fa": "lora-fa", "dora": "dora",
                        "vera": "vera", "lamda": "lamda", "lamda++": "lamda"}
    assert set(families.values()) <= set(A.FAMILIES)
    assert [n for n, m in all_methods().items() if m.rankless] == ["full"]


def test_analytic_takes_the_family_from_the_registry(monkeypatch):
    """A method registered with LoRA's family gets LoRA's closed forms without touching analytic/;
    one without a family gets none."""

    class LoraTwin(Method):
        name, family = "lora-twin", "lora"

    class NoForm(Method):
        name = "no-form"

    monkeypatch.setitem(REGISTRY, "lora-twin", LoraTwin())
    monkeypatch.setitem(REGISTRY, "no-form", NoForm())
    layers = [AdaptedLinear(10, 6), AdaptedLinear(6, 6)]
    assert A.trainable("lora-twin", layers, 2) == A.trainable("lora", layers, 2) == (16 + 12) * 2
    assert A.adapter_flops("lora-twin", layers, 2, 5) == A.adapter_flops("lora", layers, 2, 5)
    with pytest.raises(A.AnalyticError, match="no closed form for method 'no-form'"):
        A.trainable("no-form", layers, 2)


def test_lamda_schedule_defaults_are_the_options_defaults():
    for name in ("lamda", "lamda++"):
        opts = get_method(name).resolve_options({})
        assert (opts["freeze_fraction"], opts["freeze_mode"]) == (DEFAULT_FREEZE_FRACTION, DEFAULT_FREEZE_MODE)
    assert FreezeSchedule(4, 10).freeze_fraction == DEFAULT_FREEZE_FRACTION


def test_b_schedule_is_the_freezing_schedule_under_split_only():
    info = {"freeze_mode": "split", "freeze_fraction": 0.5}
    for name in ("lamda", "lamda++"):
        sched = get_method(name).b_schedule(info, 8)
        assert [sched(4, s) for s in range(6)] == [FreezeSchedule(4, 8, 0.5).trainable(s) for s in range(6)]
        assert [sched(4, s) for s in range(6)] == [4, 3, 2, 1, 0, 0]
        assert get_method(name).b_schedule({**info, "freeze_mode": "mask"}, 8) is None
    assert get_method("lora").b_schedule({}, 8) is None


def test_method_label_shows_label_options_away_from_their_default():
    rec = lambda method, **options: {"cell": {"method": method, "options": options}}  # noqa: E731
    assert method_label(rec("lamda", freeze_mode="mask")) == "lamda (mask)"
    assert method_label(rec("lamda++", freeze_mode="mask")) == "lamda++ (mask)"
    assert method_label(rec("lamda", freeze_mode="split")) == "lamda"
    assert method_label(rec("lora", freeze_mode="mask")) == "lora"  # not a label option of LoRA
    assert method_label(rec("retired-method")) == "retired-method"
    assert method_label({"cell": {}}) == "?"


def test_plain_lamda_is_lamda_at_its_default_schedule():
    rec = lambda method="lamda", **options: {"cell": {"method": method, "options": options}}  # noqa: E731
    assert is_plain_lamda(rec())
    assert is_plain_lamda(rec(freeze_fraction=DEFAULT_FREEZE_FRACTION, freeze_mode="split"))
    assert not is_plain_lamda(rec(freeze_fraction=0.5))
    assert not is_plain_lamda(rec(freeze_mode="mask"))
    assert is_plain_lamda(rec(freeze_mode="mask"), freeze_mode="mask")
    assert not is_plain_lamda(rec("lamda++"))


# ---- one target matcher ---------------------------------------------------------------------------


class QuantLikeLinear(nn.Linear):
    """An nn.Linear subclass, as bitsandbytes' Linear4bit / Linear8bitLt are."""


def _model_with_linear_subclasses() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(
        up=QuantLikeLinear(8, 16), act=nn.ReLU(), down=NonDynamicallyQuantizableLinear(16, 8), out=nn.Linear(8, 8)))


@pytest.mark.parametrize("method", ["lora", "dora", "lamda", "lamda++", "full"])
def test_every_method_adapts_nn_linear_subclasses(method):
    """LaMDA's matcher (``type(m) is nn.Linear``) refused the subclasses PEFT's LoRA adapts;
    every method now matches targets through ``targets.is_target_linear`` alike."""
    model = _model_with_linear_subclasses()
    spec = AdapterSpec(r=2, alpha=4.0, targets=["up", "down"], total_steps=4,
                       options={})
    assert list(target_linears(model, spec.targets)) == list(find_targets(model, spec.targets)) == ["up", "down"]
    applied = get_method(method).apply(model, spec)
    assert sorted(n.rsplit(".", 1)[-1] for n in applied.adapted) == ["down", "up"]
    loss = applied.model(torch.randn(3, 8)).square().mean()
    loss.backward()
    assert all(p.grad is not None for p in applied.trainable_parameters())


def test_an_adapted_layer_is_not_matched_again():
    model = _model_with_linear_subclasses()
    applied = get_method("lora").apply(model, AdapterSpec(r=2, alpha=4.0, targets=["up"]))
    assert "up" not in {n.rsplit(".", 1)[-1] for n in target_linears(applied.model, ["up"])}
    with pytest.raises(MethodError, match=r"matches .*up \(Linear\), not an nn.Linear"):
        find_targets(applied.model, ["up"])


def test_one_rank_check_for_every_method():
    model = _model_with_linear_subclasses()
    for method in ("lora", "lamda"):
        for r, message in ((0, "r must be an integer >= 1, got 0"),
                           (9, "r=9 exceeds min(d_in, d_out)=8 of up (Linear 8 -> 16)")):
            with pytest.raises(MethodError) as err:
                get_method(method).apply(copy.deepcopy(model), AdapterSpec(r=r, alpha=4.0, targets=["up"]))
            assert message in str(err.value)
