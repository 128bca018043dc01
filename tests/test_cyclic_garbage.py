"""A tracked step's figure does not depend on when Python's cyclic collector runs, nor on the
module-boundary timeline: the collector is paused in the step and run at its end
(``measure/garbage.py``), and the backward-boundary hooks are released when backward ends
(``ModuleScope.release_grad_hooks``), so a node that keeps its input on ``ctx`` (bitsandbytes'
int8 matmul does) does not keep it alive into the optimizer step."""

import gc
import weakref

import pytest
import torch
from torch import nn

from lamda_bench.measure import StepTrackers
from lamda_bench.measure.garbage import CyclicGarbage
from lamda_bench.measure.live import LiveMemoryTracker
from lamda_bench.runner import run_cell


class _Cycle:
    def __init__(self, t):
        self.t, self.me = t, self


def test_bytes_held_by_a_cycle_stay_counted_until_the_step_ends_then_are_reported():
    model = nn.Linear(8, 8)
    with CyclicGarbage() as garbage, LiveMemoryTracker(model, timeline=False) as live:
        assert not gc.isenabled()
        held = torch.ones(1024, 16)  # created under the tracker: 64 KiB of temporaries
        base = live.live_bytes
        _Cycle(held)
        del held
        for _ in range(1000):  # allocations that would trigger the collector were it on
            _Cycle(None)
        assert live.live_bytes == base  # paused: the bytes stay live
        assert garbage.collect(live) == 1024 * 16 * 4
        assert live.live_bytes == base - 1024 * 16 * 4
    assert gc.isenabled()


def test_no_cycle_reports_zero_and_the_collector_state_is_restored():
    gc.disable()
    try:
        with CyclicGarbage() as garbage, LiveMemoryTracker(nn.Linear(4, 4), timeline=False) as live:
            x = torch.ones(10)
            del x
            assert garbage.collect(live) == 0
        assert not gc.isenabled()  # was off before: stays off
    finally:
        gc.enable()


class _KeepsInputOnCtx(torch.autograd.Function):
    """Like bitsandbytes' MatMul8bitFp: the input kept on ctx, not saved for backward."""

    @staticmethod
    def forward(ctx, a, w):
        ctx.a = a
        ctx.w = w
        return a @ w.t()

    @staticmethod
    def backward(ctx, g):
        return g @ ctx.w, None


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(16, 16), requires_grad=False)
        self.head = nn.Linear(16, 16)

    def forward(self, x):
        h = _KeepsInputOnCtx.apply(x * 2.0, self.w)
        self.kept = weakref.ref(h.grad_fn.a.untyped_storage())  # what ctx holds
        return self.head(h)


def test_timeline_hooks_do_not_keep_a_ctx_input_alive_after_backward():
    model = _Block()
    x = torch.randn(4, 16, requires_grad=True)
    trackers = StepTrackers(model, lambda n: n == "head", saved=False, flops=False, timeline=True)
    with trackers:
        with trackers.phase("forward"):
            loss = model(x).sum()
        with trackers.phase("backward"):
            loss.backward()
        del loss
        # the boundary hooks held the nodes of the block's input; released now, not at exit
        assert model.kept() is None, "the ctx input outlived backward"
        assert trackers.scope._grad_hooks == []


@pytest.mark.parametrize("q", ["int8"])
def test_int8_peak_is_the_same_with_and_without_the_timeline_and_any_collector_setting(q, tmp_path,
                                                                                        one_torch_thread):
    pytest.importorskip("bitsandbytes")
    cell = dict(workload="tiny-llama", method="lora", r=4, batch=2, seq=16, dtype="bf16", device="cpu",
                mode="measure", warmup=1, steps=0, quant=q)
    plain = run_cell(cell)
    threshold = gc.get_threshold()
    gc.set_threshold(1, 1, 1)  # the collector as often as it can run
    try:
        timeline = run_cell(cell, artifacts_dir=str(tmp_path))
    finally:
        gc.set_threshold(*threshold)
    for rec in (plain, timeline):
        assert rec["status"] == "ok", rec["error"]
        assert rec["info"]["cyclic_garbage_bytes"] == 0
    assert timeline["memory"]["peak_step"] == plain["memory"]["peak_step"]
    assert timeline["memory"]["peak"] == plain["memory"]["peak"]
