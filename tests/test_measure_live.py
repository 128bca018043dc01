"""LiveMemoryTracker: hand-computed bytes by category and phase on a linear stack (fp32),
the timeline, and peak corrections when storages change category."""

import json

import pytest
import torch
from torch import nn

from lamda_bench.measure import CATEGORIES, LiveMemoryTracker

F32 = 4
WEIGHTS = (8 * 16 + 16 + 16 * 4 + 4) * F32  # Linear(8,16) + Linear(16,4), weights and biases


def _run(optimizer_cls=torch.optim.AdamW, count_input=False, **kw):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = optimizer_cls(model.parameters(), lr=0.1)
    x = torch.randn(5, 8)  # created before tracking: counted only when passed as inputs
    with LiveMemoryTracker(model, opt, inputs={"x": x} if count_input else None, **kw) as tr:
        with tr.phase("forward"):
            loss = model(x).sum()
        with tr.phase("backward"):
            loss.backward()
        with tr.phase("optimizer"):
            opt.step()
            opt.zero_grad(set_to_none=False)
    return tr


def test_categories_after_a_step():
    tr = _run()
    assert tr.current["weights"] == WEIGHTS
    assert tr.trainable_weights == WEIGHTS
    assert tr.current["grads"] == WEIGHTS  # zero_grad(set_to_none=False) keeps them
    # AdamW: exp_avg and exp_avg_sq per parameter, plus a 0-dim fp32 step per parameter
    assert tr.current["optimizer"] == 2 * WEIGHTS + 4 * F32
    assert tr.live_bytes == sum(tr.current.values())


def test_forward_peak_by_hand():
    tr = _run()
    fwd = tr.phase_peaks["forward"]
    # after ReLU: Linear(8,16)'s output (5x16) and ReLU's output (5x16) are both alive;
    # the first dies when Sequential moves on, so the 5x4 output never tops that
    assert fwd.by_category["activations"] == 2 * 5 * 16 * F32
    assert fwd.live_bytes == WEIGHTS + 2 * 5 * 16 * F32


def test_the_input_batch_counts_as_activations_when_given():
    fwd = _run(count_input=True).phase_peaks["forward"]
    assert fwd.by_category["activations"] == 2 * 5 * 16 * F32 + 5 * 8 * F32
    assert fwd.live_bytes == WEIGHTS + 2 * 5 * 16 * F32 + 5 * 8 * F32


def test_grads_counted_as_grads_within_backward():
    tr = _run()
    bwd = tr.phase_peaks["backward"]
    assert bwd.by_category["grads"] > 0
    assert bwd.by_category["temporaries"] + bwd.by_category["grads"] + bwd.by_category["activations"] == (
        bwd.live_bytes - WEIGHTS
    )


def test_first_step_optimizer_state_is_corrected_at_its_peak():
    tr = _run()
    step = tr.phase_peaks["optimizer"]
    # state created lazily inside the step is reclassified at its peak, not left as temporaries
    assert step.by_category["optimizer"] == 2 * WEIGHTS + 4 * F32
    assert tr.peak.live_bytes == max(p.live_bytes for p in tr.phase_peaks.values())


def test_timeline_module_boundaries_and_json():
    tr = _run()
    events = {(e["phase"], e["module"], e["event"]) for e in tr.timeline}
    for name in ("0", "1", "2"):
        assert ("forward", name, "pre") in events and ("forward", name, "post") in events
    assert ("backward", "2", "pre") in events and ("backward", "1", "post") in events
    assert ("optimizer", None, "start") in events and ("optimizer", None, "end") in events
    for e in tr.timeline:
        assert e["live_bytes"] == sum(e["by_category"].values())
        assert set(e["by_category"]) == set(CATEGORIES)
    json.dumps(tr.timeline)
    json.dumps(tr.summary())


def test_timeline_filter_keeps_only_wanted_modules():
    tr = _run(timeline_filter=lambda name: name == "2")
    assert {e["module"] for e in tr.timeline} == {None, "2"}


def test_phases_do_not_nest():
    model = nn.Linear(2, 2)
    with LiveMemoryTracker(model) as tr:
        with tr.phase("forward"):
            with pytest.raises(RuntimeError, match="phases do not nest"):
                with tr.phase("backward"):
                    pass


def test_freed_storages_leave_the_count():
    model = nn.Linear(4, 4)
    x = torch.randn(3, 4)
    with LiveMemoryTracker(model) as tr:
        with tr.phase("forward"):
            y = model(x)
        held = tr.current["activations"]
        del y
    assert held == 3 * 4 * F32
    assert tr.current["activations"] == 0
