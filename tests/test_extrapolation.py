"""Certified depth extrapolation (runner/depth.py, runner/extrapolate.py, runner/events.py):
an extrapolated estimate equals the full trace in every field but wall time and info.trace,
and anything that does not verify is traced in full with its reason."""

from __future__ import annotations

import copy
import itertools
import json
from types import SimpleNamespace

import pytest

from lamda_bench.runner import run_cell
from lamda_bench.runner import depth
from lamda_bench.runner.events import Event
from lamda_bench.runner.extrapolate import NotCertified, step_at, tree
from lamda_bench.runner.resolve import resolve
from lamda_bench.suite.cell import Cell

TINY = dict(workload="tiny-llama", layers=7, mode="estimate", device="cpu", batch=2, seq=16, r=4, steps=1)


@pytest.fixture(autouse=True)
def shallow_targets(monkeypatch):
    """Tiny 7-layer stacks keep these tests fast; the runner extrapolates from depth 16 by
    default (below it the probes cost about as much as the full trace)."""
    monkeypatch.setattr(depth, "MIN_DEPTH", 6)


def comparable(record: dict) -> dict:
    r = copy.deepcopy(record)
    for key in ("wall_s", "started_at"):
        r.pop(key)
    r["info"].pop("trace")
    r["cell"].pop("trace")
    return r


def both(**keys) -> tuple[dict, dict]:
    cell = dict(TINY, **keys)
    auto, full = run_cell(dict(cell)), run_cell(dict(cell, trace="full"))
    assert auto["status"] == "ok" and full["status"] == "ok", (auto["error"], full["error"])
    return auto, full


# LoRA and full fine-tuning on the CPU are the slow matrix's [lora-pure-none-False] and
# [full-pure-none-False] (test_matrix_extrapolated_equals_full); quick, LoRA's CPU record is checked by
# test_an_extrapolated_timeline_equals_the_full_trace[lora], full fine-tuning's by
# test_optimizers_with_their_own_state_extrapolate[full-adafactor]. lora-auto is slow: quick, the same cell
# with a card is test_card_memory.py's test_extrapolated_card_figures_equal_the_full_traces_replay[lora-auto]
# (its record, less the card's stream and time prediction, equals the full trace's: every field checked here).
@pytest.mark.parametrize("method, device", [("lamda", "cpu"), pytest.param("lora", "auto", marks=pytest.mark.slow)])
def test_extrapolated_record_equals_the_full_trace(method, device):
    """device auto: estimated for cuda where this torch can fake it, else with the foreach
    optimizer a CUDA run uses (its ops read every block at once)."""
    auto, full = both(method=method, device=device)
    assert auto["info"]["trace"]["mode"] == "extrapolated", auto["info"]["trace"]
    assert auto["info"]["trace"]["probe_depths"] == list(depth.PROBE_DEPTHS)
    assert full["info"]["trace"] == {"mode": "full", "probe_depths": [], "reason": "trace = 'full' asked for"}
    assert comparable(auto) == comparable(full)
    assert auto["id"] == full["id"]


# lamda-4 is slow: the slow matrix runs LaMDA under fsdp2 at world sizes 2 and 4 (test_matrix_...[fsdp2-lamda-*])
@pytest.mark.parametrize("method, world_size", [("lora", 2), pytest.param("lamda", 4, marks=pytest.mark.slow)])
def test_a_sharded_record_equals_the_full_trace(method, world_size):
    """Rank 0 of an FSDP2 job: memory.per_rank (the breakdown at the peak and at each phase's
    peak, with the all-gathered weights and collective buffers) comes from the events too."""
    auto, full = both(method=method, parallel="fsdp2", world_size=world_size)
    assert auto["info"]["trace"]["mode"] == "extrapolated", auto["info"]["trace"]
    phases = auto["memory"]["per_rank"]["phase_peaks"]
    assert phases["forward"]["by_category"]["unsharded_weights"] > 0  # the gathered weights are in it
    assert comparable(auto) == comparable(full)


@pytest.mark.parametrize("method, optimizer", [("full", "adafactor"), ("lora", "paged_adamw_8bit")])
def test_optimizers_with_their_own_state_extrapolate(method, optimizer):
    """Adafactor makes a new ``RMS`` tensor each step: the storage id of the old one, freed,
    comes back for a temporary, which must not be taken for a block's ('blocks visited in the
    order [0, 1, 0, 1, ...]'). Paged state (LLaMA2-7B widths: bitsandbytes pages tensors of 4096
    elements or more) registers without a live-bytes change, which split the events before the
    step by block ('the phases' events do not align'). Both were traced in full."""
    keys = dict(workload="llama2-7b", layers=6, seq=64, r=16) if optimizer.startswith("paged") else {}
    auto, full = both(method=method, optimizer=optimizer, device="auto", **keys)
    assert auto["info"]["trace"]["mode"] == "extrapolated", auto["info"]["trace"]
    assert comparable(auto) == comparable(full)


@pytest.mark.parametrize("keys", [dict(method="lora"),
                                  # quick: test_extrapolated_record_equals_the_full_trace[lamda-cpu] (LaMDA's record)
                                  pytest.param(dict(method="lamda", gradient_checkpointing=True), marks=pytest.mark.slow),
                                  # sharded records: test_a_sharded_record_equals_the_full_trace (quick)
                                  pytest.param(dict(method="full", parallel="fsdp2", world_size=2),
                                               marks=pytest.mark.slow)],
                         ids=["lora", "lamda-checkpointing", "full-fsdp2"])
def test_an_extrapolated_timeline_equals_the_full_trace(tmp_path, keys):
    """The module-boundary timeline file, entry by entry (module names with their block index,
    live bytes, every category); the per-module detail file comes with the full trace only."""
    cell = dict(TINY, **keys)
    auto = run_cell(dict(cell), str(tmp_path / "auto"))
    full = run_cell(dict(cell, trace="full"), str(tmp_path / "full"))
    assert auto["info"]["trace"]["mode"] == "extrapolated", auto["info"]["trace"]
    without_files = lambda rec: {k: v for k, v in comparable(rec).items() if k != "artifacts"}  # noqa: E731
    assert without_files(auto) == without_files(full)  # the record itself, as in the test above
    assert list(auto["artifacts"]) == ["timeline"] and set(full["artifacts"]) == {"timeline", "detail"}
    read = lambda side, rec: json.loads((tmp_path / side / rec["artifacts"]["timeline"]).read_text())  # noqa: E731
    a, f = read("auto", auto), read("full", full)
    assert len(a["events"]) > 7 * 8
    assert a == f


def test_trace_is_not_part_of_the_id():
    assert Cell(workload="tiny-llama", method="lora").id == Cell(workload="tiny-llama", method="lora", trace="full").id


@pytest.mark.parametrize("keys, reason", [
    (dict(layers=5), "depth 5 is below 6"),
    (dict(method="lamda++"), "LaMDA++ gives each layer its own rank"),
    (dict(workload="gemma2-9b", layers=8), "config layer_types differs between layers"),
    (dict(workload="linear", layers=8), "the linear workload has no block stack"),
    (dict(workload="tiny-bart", layers=8), "encoder-decoder models have two block stacks"),
])
def test_why_full_names_the_reason(keys, reason):
    cell = {**TINY, "method": "lora", **keys}
    if cell["workload"] == "linear":
        cell.pop("r")
    plan = resolve(Cell.from_dict(cell), timeline=False)
    assert reason in depth.why_full(plan)


def test_a_full_trace_record_says_why():
    record = run_cell(dict(TINY, method="lora", layers=3))
    assert record["status"] == "ok"
    assert record["info"]["trace"]["mode"] == "full"
    assert "depth 3 is below 6" in record["info"]["trace"]["reason"]


def test_tree_refuses_what_is_not_affine():
    assert tree([{"a": 10, "b": [1, 1]}, {"a": 13, "b": [1, 1]}, {"a": 16, "b": [1, 1]}], [3, 4, 5], 32, "x") == \
        {"a": 97, "b": [1, 1]}
    with pytest.raises(NotCertified, match="x.a is not affine"):
        tree([{"a": 10}, {"a": 13}, {"a": 17}], [3, 4, 5], 32, "x")
    with pytest.raises(NotCertified, match="length changes"):
        tree([[1], [1, 2], [1, 2, 3]], [3, 4, 5], 32, "x")
    with pytest.raises(NotCertified, match="not an integer"):
        tree([0.5, 0.6, 0.7], [3, 4, 5], 32, "x")


# ---- the peak is a maximum over events, not a line through peaks --------------------------


def synthetic_log(d: int) -> SimpleNamespace:
    """A step at depth d: forward keeps 60 B per block, backward frees them, and the optimizer's
    temporaries grow faster with depth than the backward's peak (full fine-tuning's shape)."""
    events, seq = [], itertools.count(1)
    weights = 100 * d

    def ev(phase, block, live):
        events.append(Event(phase, block, live, {"weights": weights, "temporaries": live - weights}, 0, 0, next(seq)))

    ev(None, None, weights)
    ev("forward", None, weights)
    for k in range(d):
        ev("forward", k, weights + 60 * (k + 1))
    ev("backward", None, weights + 60 * d)
    for k in reversed(range(d)):
        ev("backward", k, weights + 60 * (k + 1) + 5)
    ev("optimizer", None, weights)
    for k in range(d):
        ev("optimizer", k, weights + 90 * d - 200)
    return SimpleNamespace(events=events, corrected=lambda e: dict(e.cats))


def test_the_peak_moves_between_phases_with_depth():
    logs = {d: synthetic_log(d) for d in depth.PROBE_DEPTHS}
    truth = synthetic_log(32)
    for log in logs.values():  # at every probe depth the backward holds the peak
        assert max(log.events, key=lambda e: e.live).phase == "backward"
    assert max(truth.events, key=lambda e: e.live).phase == "optimizer"  # at 32 blocks the optimizer does
    at = step_at(logs, 32, "step")
    assert at.live_bytes == max(e.live for e in truth.events) == 3200 + 90 * 32 - 200
    peaks = [max(e.live for e in log.events) for log in logs.values()]
    assert at.live_bytes != peaks[0] + (peaks[1] - peaks[0]) * (32 - 3)  # the line through peaks misses
    assert at.phase_peaks == {p: max(e.live for e in truth.events if e.phase == p)
                              for p in ("forward", "backward", "optimizer")}
    assert at.by_category == {"weights": 3200, "temporaries": 90 * 32 - 200}


def test_an_event_that_is_not_affine_is_refused():
    logs = {d: synthetic_log(d) for d in depth.PROBE_DEPTHS}
    logs[5].events[4].live += 1  # one forward event off by a byte at depth 5
    with pytest.raises(NotCertified, match="not affine"):
        step_at(logs, 32, "step")


# ---- the wider matrix (slow): run before trusting a change to the extrapolation -------------


MATRIX = [dict(method=m, precision=p, quant=q, gradient_checkpointing=g)
          for m in ("lora", "lamda", "pissa", "dora", "full")
          for p in ("pure", "amp-bf16") for q in ("none", "nf4") for g in (False, True)
          if not (m in ("full", "dora") and q != "none")]  # refused by the runner: no quantized full FT; DoRA on a fake nf4 base


OPTIMIZERS = [dict(method=m, optimizer=o, device=dev) for m in ("lora", "full")
              for o in ("adamw_torch_fused", "adamw_bnb_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "lion_8bit",
                        "adafactor", "sgd", "muon")
              for dev in ("cpu", "auto")]
SHARDED = [dict(parallel="fsdp2", method=m, world_size=w, precision=p, gradient_checkpointing=g, device=dev)
           for m in ("lora", "lamda", "full") for w in (2, 4) for p in ("pure", "amp-bf16")
           for g in (False, True) for dev in ("cpu", "auto")]


@pytest.mark.slow
@pytest.mark.parametrize("keys", MATRIX + OPTIMIZERS + SHARDED, ids=lambda k: "-".join(str(v) for v in k.values()))
def test_matrix_extrapolated_equals_full(keys):
    auto, full = both(**keys)
    assert auto["info"]["trace"]["mode"] == "extrapolated", auto["info"]["trace"]
    assert comparable(auto) == comparable(full)


@pytest.mark.slow
@pytest.mark.parametrize("workload", ["tiny-deberta", "llama2-7b"])
def test_other_stacks(workload):
    keys = dict(workload=workload, method="lora")
    if workload == "llama2-7b":
        keys.update(layers=6, seq=64)
    auto, full = both(**keys)
    assert auto["info"]["trace"]["mode"] == "extrapolated", auto["info"]["trace"]
    assert comparable(auto) == comparable(full)


def test_with_trace_sets_the_key_and_refuses_unknown_values():
    from lamda_bench.api import ApiError, with_trace

    cells = [Cell(workload="tiny-llama", method="lora")]
    assert [c.trace for c in with_trace(cells, "full")] == ["full"]
    assert with_trace(cells, "auto") is cells
    with pytest.raises(ApiError, match="trace 'some' is not one of"):
        with_trace(cells, "some")


def test_a_model_refused_at_a_probe_depth_is_traced_in_full(tmp_path):
    """Mllama's images reach the language model only through its cross-attention layers: a probe
    cut below the first one is refused, so the cell is traced at its own depth, where it runs."""
    from lamda_bench.model.workloads import CONFIG_DIR

    config = json.loads((CONFIG_DIR / "tiny-mllama.json").read_text())
    config["text_config"].update(cross_attention_layers=[5], num_hidden_layers=7)
    (tmp_path / "config.json").write_text(json.dumps(config))
    rec = run_cell(dict(TINY, workload=str(tmp_path / "config.json"), method="lora", image_size=56))
    assert rec["status"] == "ok", rec.get("error")
    trace = rec["info"]["trace"]
    assert trace["mode"] == "full" and "depth 3:" in trace["reason"] and "cross-attention" in trace["reason"]
