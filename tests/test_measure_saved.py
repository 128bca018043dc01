"""SavedTensorTracker: hand-computed saved bytes on linear stacks, a PEFT LoRA layer and
gradient checkpointing (all fp32, so one element is 4 bytes)."""

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from lamda_bench.measure import SavedTensorTracker

F32 = 4


def _step(model, x, is_adapter=lambda n: False):
    with SavedTensorTracker(model, is_adapter) as tracker:
        model(x).sum().backward()
    return tracker


def test_linear_stack_counts_inputs_and_excludes_weight_views():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    model[2].requires_grad_(False)  # frozen: saves only a transposed view of its weight
    x = torch.randn(5, 8)
    tr = _step(model, x, lambda n: n == "0")
    # "0" saves its input x (5x8), ReLU saves its output (5x16); "2" saves W^T (excluded)
    assert tr.by_module == {"0": 5 * 8 * F32, "1": 5 * 16 * F32}
    assert tr.total_bytes == (5 * 8 + 5 * 16) * F32
    assert tr.adapter_bytes == 5 * 8 * F32
    assert tr.base_bytes == 5 * 16 * F32
    assert tr.recomputed_bytes == 0


def test_frozen_linear_saves_no_new_memory():
    lin = nn.Linear(8, 8).requires_grad_(False)
    x = torch.randn(3, 8, requires_grad=True)
    with SavedTensorTracker(lin, lambda n: False) as tr:
        lin(x).sum().backward()
    shapes = [t.shape for t in tr.tensors]
    assert tr.total_bytes == 0 and shapes == []  # the weight view is never even listed


def test_shared_input_storage_counted_once():
    class QKV(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            return self.q(x) + self.k(x) + self.v(x)

    x = torch.randn(5, 8)
    tr = _step(QKV(), x)
    saves_of_x = [t for t in tr.tensors if t.shape == (5, 8)]
    assert len(saves_of_x) == 3  # three saves of x...
    assert sum(t.new_bytes for t in saves_of_x) == 5 * 8 * F32  # ...one storage
    assert tr.total_bytes == 5 * 8 * F32
    assert tr.has_saved(x) and tr.has_saved(x[1:].untyped_storage())
    assert not tr.has_saved(torch.randn(5, 8)) and not tr.has_saved(tr.model.q.weight)


def _peft_layer(d_in, d_out, r):
    from peft import LoraConfig, get_peft_model

    class One(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(d_in, d_out)

        def forward(self, x):
            return self.lin(x)

    return get_peft_model(One(), LoraConfig(r=r, lora_alpha=2 * r, target_modules=["lin"], lora_dropout=0.0))


@pytest.mark.parametrize("d_in", [32, 64])
def test_peft_lora_layer_saves_x_and_ax(d_in):
    torch.manual_seed(0)
    n, d_out, r = 6, 24, 4
    model = _peft_layer(d_in, d_out, r)
    tr = _step(model, torch.randn(n, d_in), lambda name: "lora_" in name)
    a = "base_model.model.lin.lora_A.default"
    b = "base_model.model.lin.lora_B.default"
    # frozen base with an input needing no grad saves nothing; lora_A saves x, lora_B saves A x
    assert tr.by_module == {a: n * d_in * F32, b: n * r * F32}
    assert tr.adapter_bytes == tr.total_bytes == (n * d_in + n * r) * F32


class _Checkpointed(nn.Module):
    def __init__(self, use_checkpoint):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))
        self.use_checkpoint = use_checkpoint

    def forward(self, x):
        if self.use_checkpoint:
            return checkpoint(self.block, x, use_reentrant=False)
        return self.block(x)


def test_gradient_checkpointing_counts_recomputation_in_backward():
    torch.manual_seed(0)
    x = torch.randn(5, 8, requires_grad=True)
    plain = _step(_Checkpointed(False), x)
    ckpt = _step(_Checkpointed(True), x)
    # plain: x (5x8) for block.0, ReLU output (5x16) shared with block.2's input
    assert plain.total_bytes == (5 * 8 + 5 * 16) * F32
    # checkpointed: forward keeps only the region's input x ...
    assert ckpt.total_bytes == 5 * 8 * F32
    # ... and recomputation in backward saves the ReLU output again (x is already counted)
    assert ckpt.recomputed_bytes == 5 * 16 * F32
    assert {t.phase for t in ckpt.tensors} == {"forward", "backward"}
    assert {t.module for t in ckpt.tensors if t.phase == "backward"} == {"block.0", "block.1", "block.2"}


def test_checkpoint_hook_restored_after_exit():
    import torch.utils.checkpoint as cp

    before = cp._recomputation_hook
    with SavedTensorTracker(nn.Linear(2, 2), lambda n: False):
        assert cp._recomputation_hook is not before
    assert cp._recomputation_hook is before


class _DroppedSideGraph(nn.Module):
    """Like PEFT's DoRA weight norm: a graph through a trainable layer, used only detached."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.side = nn.Linear(8, 4, bias=False)

    def forward(self, x):
        side = self.side(torch.eye(8))  # saves the 8x8 eye for side.weight's grad
        scale = side.detach().norm()  # the side graph dies when this returns
        return self.lin(x) * scale


@pytest.mark.parametrize("phases", [False, True])
def test_graph_dropped_in_forward_is_discarded_not_kept(phases):
    torch.manual_seed(0)
    model = _DroppedSideGraph()
    x = torch.randn(5, 8)
    with SavedTensorTracker(model, lambda n: n == "side") as tr:
        if phases:
            with tr.phase("forward"):
                loss = model(x).sum()
            with tr.phase("backward"):
                loss.backward()
        else:
            model(x).sum().backward()
    # kept for backward: lin's input x (5x8) and the 0-dim scale the product saves
    assert tr.total_bytes == (5 * 8 + 1) * F32
    assert tr.adapter_bytes == 0
    assert tr.discarded_bytes == tr.discarded_adapter_bytes == 8 * 8 * F32
    assert sum(tr.by_module.values()) == tr.total_bytes and "side" not in tr.by_module
    assert [t.shape for t in tr.tensors if t.discarded] == [(8, 8)]


def test_storages_released_by_backward_stay_counted():
    """Backward frees what it used: that must not read as forward dropping it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    with SavedTensorTracker(model, lambda n: False) as tr:
        h = model(torch.randn(5, 8))
        h.sum().backward()
        del h
    # x, and ReLU's output (saved by ReLU and by the second linear: one storage)
    assert tr.total_bytes == (5 * 8 + 5 * 16) * F32 and tr.discarded_bytes == 0
