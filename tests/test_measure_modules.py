"""measure/modules.py: which module runs now, in forward and in backward, on real PEFT LoRA layers
of a tiny real transformers model (LLaMA architecture, random weights).

The point of ModuleScope is adapter attribution: every op of the step goes to the innermost
module running, so the trackers can split saved bytes and FLOPs into adapter and base. The
tests count matmuls per module, where the arithmetic is known.
"""

from collections import Counter

import pytest
import torch

from lamda_bench.suite.cell import Cell
from lamda_bench.measure.modules import ModuleScope
from lamda_bench.methods import AdapterSpec, get_method
from lamda_bench.model.workloads import build_model, compute_loss, make_inputs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MATMULS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default}
LAYER0_Q = "base_model.model.model.layers.0.self_attn.q_proj"
LAYER1_Q = "base_model.model.model.layers.1.self_attn.q_proj"


def _lora_llama():
    cell = Cell(workload="tiny-llama", method="lora", r=4, dtype="fp32", device="cpu", batch=2, seq=8)
    model = build_model(cell, "cpu")
    applied = get_method("lora").apply(model, AdapterSpec(r=4, alpha=8.0, targets=["q_proj", "v_proj"]))
    return cell, applied


def _attributed_matmuls(applied, cell):
    """(phase, module) -> matmul count over one forward and backward, attributed by ModuleScope."""
    scope = ModuleScope(applied.model)
    counts: Counter = Counter()

    def observe(func, args, kwargs, out):
        if func in MATMULS:
            counts["backward" if scope.in_backward else "forward", scope.current()] += 1

    scope.ops.add(observe)
    inputs = make_inputs(cell, "cpu")
    with scope, scope.ops:
        compute_loss(cell, applied.model, inputs).backward()
    return counts


def test_lora_matmuls_go_to_the_adapter_modules_in_forward_and_backward():
    cell, applied = _lora_llama()
    counts = _attributed_matmuls(applied, cell)
    for layer in (LAYER0_Q, LAYER1_Q):
        a, b = f"{layer}.lora_A.default", f"{layer}.lora_B.default"
        assert applied.is_adapter_module(a) and applied.is_adapter_module(b)
        assert not applied.is_adapter_module(f"{layer}.base_layer")
        assert counts["forward", a] == counts["forward", b] == 1  # A x, then B (A x)
        assert counts["forward", f"{layer}.base_layer"] == 1  # W x
        # B: its weight gradient and the gradient into A x (which needs one: A trains)
        assert counts["backward", b] == 2
    # A: its weight gradient, plus dL/dx where x needs a gradient. Layer 0's input comes from
    # frozen embeddings through a frozen norm: no input gradient there. This is the case where
    # torch's ModuleTracker leaves the module "entered" for the rest of backward.
    assert counts["backward", f"{LAYER0_Q}.lora_A.default"] == 1
    assert counts["backward", f"{LAYER1_Q}.lora_A.default"] == 2
    # ...and nothing after layer 0's backward is attributed to it: the frozen base weight of
    # layer 0 computes no gradient at all, so it has no backward matmul.
    assert counts["backward", f"{LAYER0_Q}.base_layer"] == 0
    assert counts["backward", f"{LAYER1_Q}.base_layer"] == 1  # dL/dx only (W frozen)


def test_adapter_backward_matmuls_match_the_closed_form_count():
    """Summed over the adapted layers, the adapter's backward matmuls are what analytic/'s
    chain counts: per layer 1 (B's weight grad) + 1 (into A x) + 1 (A's weight grad) + 1 if the
    layer input needs a gradient. Layer 0's q and v read the embedding output: no input grad."""
    cell, applied = _lora_llama()
    counts = _attributed_matmuls(applied, cell)
    adapter = sum(n for (phase, name), n in counts.items() if phase == "backward" and name
                  and applied.is_adapter_module(name))
    layers = len(applied.adapted)
    first_layer = sum(1 for n in applied.adapted if ".layers.0." in n)
    assert adapter == 4 * layers - first_layer


def test_boundaries_are_reported_in_forward_and_backward_order():
    cell, applied = _lora_llama()
    scope = ModuleScope(applied.model)
    target = f"{LAYER1_Q}.lora_A.default"
    events = []
    scope.add_listener(lambda phase, name, event: events.append((phase, event)), lambda name: name == target)
    inputs = make_inputs(cell, "cpu")
    with scope:
        compute_loss(cell, applied.model, inputs).backward()
    assert events == [("forward", "pre"), ("forward", "post"), ("backward", "pre"), ("backward", "post")]


def test_outside_the_scope_nothing_is_attributed_and_hooks_are_gone():
    cell, applied = _lora_llama()
    scope = ModuleScope(applied.model)
    assert scope.current() is None
    with scope:
        with scope:  # re-entrant: the inner exit keeps the hooks
            pass
        seen = []
        scope.ops.add(lambda *a: seen.append(scope.current()))
        with scope.ops:
            applied.model(**make_inputs(cell, "cpu"))
        assert any(name and name.endswith("lora_A.default") for name in seen)
    seen.clear()
    with scope.ops:  # the scope is closed: ops run, nothing is attributed
        applied.model(**make_inputs(cell, "cpu"))
    assert seen and set(seen) == {None}
    with pytest.raises(TypeError, match="needs an nn.Module"):
        ModuleScope("not a model")
