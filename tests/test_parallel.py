"""Data-parallel cells: world_size / parallel keys, FSDP2 rank-0 estimates on a fake process
group, the sharded closed forms, and a cross-check against torch's FSDPMemTracker."""

import pytest
import torch

from lamda_bench import analytic
from lamda_bench.suite.cell import Cell
from lamda_bench.runner import run_cell
from lamda_bench.suite.parse import SuiteError, parse_suite

W = 3  # does not divide tiny-llama's dims (64, 32, 176, 256): padding is exercised


def sharded_cell(method="lora", world_size=W, **kw):
    cell = dict(workload="tiny-llama", method=method, r=4, dtype="fp32", device="cpu", mode="estimate",
                batch=2, seq=16, warmup=1, steps=1, world_size=world_size, parallel="fsdp2")
    cell.update(kw)
    return cell


def ok(record):
    assert record["status"] == "ok", record["error"]
    return record


# ---- keys and ids --------------------------------------------------------------------------


def test_default_parallel_keys_keep_the_id(make_cell):
    cell = make_cell()
    assert "world_size" not in cell.id and cell.world_size == 1 and cell.parallel == "none"
    same = Cell.from_dict({k: v for k, v in cell.to_dict().items()
                           if k not in ("world_size", "parallel", "reshard_after_forward")})
    assert same.id == cell.id  # a record written before the keys existed has the same id
    sharded = make_cell(world_size=8, parallel="fsdp2")
    assert sharded.id != cell.id
    assert make_cell(world_size=8, parallel="fsdp2", reshard_after_forward=False).id != sharded.id
    assert make_cell(world_size=1, parallel="fsdp2").id != cell.id


@pytest.mark.parametrize("fields, message", [
    (dict(world_size=0), "world_size must be an integer >= 1"),
    (dict(world_size=2), "needs parallel = 'fsdp2' or 'ddp'"),
    (dict(parallel="zero3"), "is not one of"),
])
def test_parallel_problems_are_one_line(make_cell, fields, message):
    problem = make_cell(**fields).parallel_problem()
    assert problem and message in problem and "\n" not in problem
    rec = run_cell(make_cell(**fields).to_dict())
    assert rec["status"] == "error" and message in rec["error"]


def test_suite_refuses_world_size_without_parallel():
    text = ('[suite]\nname = "x"\n[[sweep]]\nworkload = "tiny-llama"\nmethod = "lora"\nworld_size = [1, 2]\n')
    with pytest.raises(SuiteError, match="world_size 2 needs parallel"):
        parse_suite(text, "x.toml")
    ok_text = text.replace("world_size = [1, 2]", 'world_size = [1, 2]\nparallel = "fsdp2"')
    cells = parse_suite(ok_text, "x.toml").cells
    assert [c.world_size for c in cells] == [1, 2]


# ---- closed forms by hand --------------------------------------------------------------------


def test_shard_closed_forms_pad_dim0_by_hand():
    assert analytic.shard_rows(176, 3) == 59 and analytic.shard_rows(64, 8) == 8 and analytic.shard_rows(4, 8) == 1
    gate = analytic.ShardedParam((176, 64), 2, trainable=False)
    assert analytic.rank0_bytes(gate, 3) == 59 * 64 * 2
    assert analytic.gathered_bytes([gate], 3) == 177 * 64 * 2  # padded to a multiple of W
    replicated = analytic.ShardedParam((64, 4), 4, trainable=True, sharded=False)
    lora_a = analytic.ShardedParam((4, 64), 4, trainable=True)
    mem = analytic.fsdp2_rank_memory([gate, replicated, lora_a], 3)
    assert mem["weights"] == 59 * 64 * 2 + 64 * 4 * 4 + 2 * 64 * 4
    assert mem["grads"] == mem["trainable_weights"] == 64 * 4 * 4 + 2 * 64 * 4
    assert mem["optimizer"] == 2 * mem["grads"] + 2 * 4  # two moments, one fp32 step per param
    assert analytic.fsdp2_rank_memory([gate, lora_a], 3, optimizer="sgd")["optimizer"] == 0


# ---- the estimate ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lora_records():
    single = ok(run_cell(sharded_cell(world_size=1, parallel="none")))
    sharded = ok(run_cell(sharded_cell()))
    return single, sharded


def test_fsdp2_estimate_matches_the_sharded_closed_forms(lora_records):
    single, rec = lora_records
    mem, pred = rec["memory"], rec["predicted"]["sharded"]
    for key in ("weights", "trainable_weights", "grads", "optimizer"):
        assert mem[key] == pred[key], key
    # Every parameter sharded 3 ways: about a third of one device's weights (padding and the
    # replicated rotary buffer on top), far under a half.
    assert single["memory"]["weights"] / 3 <= mem["weights"] < single["memory"]["weights"] / 2
    assert rec["info"]["parallel"]["wrapped_blocks"] == 2
    assert rec["info"]["parallel"]["block_class"] == ["LlamaDecoderLayer"]
    assert rec["cell"]["world_size"] == W and rec["cell"]["parallel"] == "fsdp2"


def test_estimate_output_holds_rank_bytes_against_rank_closed_forms(lora_records):
    """``lamda-bench estimate`` on a sharded cell: rank 0's weights, gradients and optimizer
    state beside predicted.sharded (they agree), not beside the whole model's closed forms."""
    from lamda_bench.one_cell.output import describe

    _, rec = lora_records
    text = describe(rec, False, "results.jsonl")
    for name in ("weights", "gradients", "optimizer state"):
        row = next(line for line in text.splitlines() if line.startswith(f"{name} (rank 0)"))
        assert row.rstrip().endswith("equal"), row


def test_fsdp2_collective_buffers_are_their_own_categories(lora_records):
    _, rec = lora_records
    per_rank = rec["memory"]["per_rank"]
    fwd = per_rank["phase_peaks"]["forward"]["by_category"]
    # At the forward peak FSDP2 holds two flat all-gather buffers: the block computing and the
    # next one, prefetched (its default); each is one block at its padded, gathered size.
    assert fwd["comm_buffers"] == 2 * rec["predicted"]["sharded"]["largest_block_gathered"]
    assert fwd["unsharded_weights"] > 0
    # After the step every block is resharded: nothing gathered is left.
    opt = per_rank["phase_peaks"]["optimizer"]["by_category"]
    assert opt["unsharded_weights"] == 0 and opt["comm_buffers"] == 0
    assert sum(per_rank["at_peak"].values()) == rec["memory"]["peak"]


# ---- LaMDA: B sharded by hand, its split freezing on DTensors ---------------------------------
# bf16 on the estimate's CUDA target: AdamW runs foreach (one kernel over a group), which refuses
# a group mixing plain tensors and DTensors: the 70B cells' old failure. Horizon 5 steps, so the
# schedule (r = 4) trains B's columns 4, 2, 0, 0, 0 and the freeze point falls inside the run.
LAMDA = dict(method="lamda", dtype="bf16", device="auto")
BEFORE_FREEZE = dict(warmup=0, steps=4)  # instrumented step 1: all of B trains
AFTER_FREEZE = dict(warmup=3, steps=1)  # instrumented step 4: B frozen, its state gone


def lamda_closed_forms(cell: dict, world_size: int):
    """(per-step closed form, schedule) from the model's own shapes, built on meta: the base
    model's parameters sharded (buffers replicated) plus ``analytic.lamda_sharded_params``."""
    from lamda_bench.methods.lamda.layer import FreezeSchedule
    from lamda_bench.runner.build import prepare
    from lamda_bench.runner.resolve import resolve

    plan = resolve(Cell.from_dict(cell), timeline=False)
    applied, spec = prepare(plan, "meta")
    horizon = plan.horizon
    adapter = {id(p) for m in applied.adapted.values() for n, p in m.named_parameters() if n.startswith("lamda_")}
    base = [analytic.ShardedParam(tuple(p.shape), p.element_size(), trainable=False)
            for p in applied.model.parameters() if id(p) not in adapter]
    base += [analytic.ShardedParam(tuple(b.shape), b.element_size(), trainable=False, sharded=False)
             for b in applied.model.buffers()]
    layers = [analytic.AdaptedLinear(m.in_features, m.out_features) for m in applied.adapted.values()]
    schedule = FreezeSchedule(cell["r"], horizon, 0.3)

    def at(step: int) -> dict:
        lamda = analytic.lamda_sharded_params(layers, cell["r"], lambda rl: schedule.trainable(step))
        mem = analytic.fsdp2_rank_memory(base + lamda, world_size)
        mem["optimizer_adapter_only"] = analytic.fsdp2_rank_memory(lamda, world_size)["optimizer"]
        return mem

    return at, schedule


@pytest.fixture(scope="module")
def lamda_before():
    cell = sharded_cell(world_size=2, **LAMDA, **BEFORE_FREEZE)
    return cell, ok(run_cell(cell))


@pytest.fixture(scope="module")
def lamda_after():
    cell = sharded_cell(world_size=4, **LAMDA, **AFTER_FREEZE)
    return cell, ok(run_cell(cell))


@pytest.mark.parametrize("which", ["lamda_before", "lamda_after"])
def test_lamda_sharded_bytes_match_its_closed_forms_before_and_after_the_freeze(which, request):
    cell, rec = request.getfixturevalue(which)
    w = cell["world_size"]
    at, schedule = lamda_closed_forms(cell, w)
    assert [schedule.trainable(k) for k in range(5)] == [4, 2, 0, 0, 0]
    step = cell["warmup"]  # the instrumented step, 0-based
    expect = at(step)
    for key in ("weights", "trainable_weights", "grads", "optimizer"):
        assert rec["memory"][key] == expect[key], key
        assert rec["predicted"]["sharded"][key] == expect[key], key
    # Every step's optimizer state (recorded after its update, before its freeze) is the closed
    # form's for the columns that step trained: B's moments and step scalars vanish at the freeze.
    opt = rec["series"]["optimizer"]
    assert opt == [at(k)["optimizer"] for k in range(len(opt))]
    assert opt[0] > opt[1] > opt[2] == opt[-1] == at(4)["optimizer_adapter_only"]
    # B is sharded like the rest: nothing is left whole on a rank but the rotary buffer.
    assert rec["info"]["parallel"]["sharded_outside_fsdp"] > 0
    # FSDP2's flat all-gather buffers (one or two blocks live at the forward peak, by where it
    # falls) hold no B: it is gathered apart, so they are whole blocks without it.
    fwd = rec["memory"]["per_rank"]["phase_peaks"]["forward"]["by_category"]
    gathered = rec["predicted"]["sharded"]["largest_block_gathered"]
    assert fwd["comm_buffers"] in (gathered, 2 * gathered)


def test_lamda_sharded_freezing_follows_the_single_device_schedule(lamda_before):
    cell, rec = lamda_before
    single = ok(run_cell(dict(cell, world_size=1, parallel="none")))
    assert rec["series"]["trainable"] == single["series"]["trainable"]  # global parameter counts
    assert rec["series"]["optimizer"][-1] < single["series"]["optimizer"][-1]


def test_lamda_mask_mode_is_refused_under_fsdp2():
    rec = run_cell(sharded_cell("lamda", options={"freeze_mode": "mask"}, steps=0))
    assert rec["status"] == "error" and "freeze_mode 'mask' cannot run under fsdp2" in rec["error"]


@pytest.mark.parametrize("which", ["lamda_before", "lamda_after"])
def test_lamda_rank_bytes_agree_with_fsdp_mem_tracker(which, request):
    cell, rec = request.getfixturevalue(which)
    peak = _tracked_step(Cell.from_dict(cell), freeze_after=cell["warmup"])
    # FSDPMemTracker sees only the parameters FSDP2 manages (its track_external is a no-op), so
    # B's local shards, sharded outside FSDP2, are added from the model itself.
    assert peak["SHARDED_PARAM"] + peak["BUFFER"] + peak["outside_fsdp"] == rec["memory"]["weights"]
    assert peak["OPT"] == rec["memory"]["optimizer"]  # B's DTensor moments included while it trains
    # The run's peak is another step's here (LaMDA's steps 1 and 2 are tracked too), which holds
    # FSDP2's gathered blocks as briefly as the instrumented step: a tracked step that missed
    # FSDP2's storage resizes counted every gathered block as never freed (21% over at W = 2).
    assert peak["Total"] == pytest.approx(rec["memory"]["peak"], rel=0.15)
    assert peak["Total"] == pytest.approx(rec["series"]["peak"][cell["warmup"]], rel=0.05)  # the same step


# ---- cross-check against torch's own FSDP memory tracker ------------------------------------


def _tracked_step(c: Cell, freeze_after: int = 0) -> dict:
    """One training step of ``c`` (built, sharded and primed as the estimate does) under torch's
    FSDPMemTracker; its peak snapshot by category name, plus ``outside_fsdp``: the local bytes of
    LaMDA's B, which FSDP2 does not manage. ``freeze_after``: the method's
    ``on_step`` first (LaMDA's freezing, on the sharded parameters) for that many steps."""
    fsdp_tracker = pytest.importorskip("torch.distributed._tools.fsdp2_mem_tracker")
    from lamda_bench.model import parallel
    from lamda_bench.model import workloads
    from lamda_bench.runner.build import make_optimizer, prepare, prime_adam
    from lamda_bench.runner.resolve import estimate_device, resolve
    from lamda_bench.model.fake import to_fake

    plan = resolve(c, timeline=False)
    applied, _ = prepare(plan, "meta")
    device, _ = estimate_device(c, "cpu")  # where the estimate's fake tensors live
    fake_mode = to_fake(applied.model, device)
    with parallel.fake_job(c.world_size, device) as mesh, fake_mode:
        parallel.shard(applied, mesh, True)
        if freeze_after:
            applied.on_step(freeze_after, None)
        inputs = workloads.make_inputs(c, device)
        optimizer = make_optimizer(c, applied, for_cuda=c.device != "cpu")
        prime_adam(optimizer)  # the estimate's optimizer state before its step
        tracker = fsdp_tracker.FSDPMemTracker(applied.model, optimizer)
        tracker.track_inputs((inputs["input_ids"],))
        with tracker:
            workloads.compute_loss(c, applied.model, inputs).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        (peak,) = tracker.get_tracker_snapshot("peak").values()
        outside = sum(parallel.local(p).untyped_storage().nbytes()
                      for b in parallel.lamda_b_modules(applied) for p in b.parameters())
    return {getattr(k, "name", str(k)): v for k, v in peak.items()} | {"outside_fsdp": outside}


def test_rank_bytes_agree_with_fsdp_mem_tracker(lora_records):
    _, rec = lora_records
    by = _tracked_step(Cell.from_dict(sharded_cell()))
    # Persistent bytes: the same storages, counted by two independent trackers.
    assert by["SHARDED_PARAM"] + by["BUFFER"] == rec["memory"]["weights"]
    assert by["OPT"] == rec["memory"]["optimizer"]
    # The step's peak: the two trackers classify transients differently but must see the same high point.
    assert by["Total"] == pytest.approx(rec["memory"]["peak"], rel=0.15)


@pytest.mark.parametrize("method, steps", [("lora", {}), ("lamda", dict(warmup=2, steps=3))])
def test_world_size_one_measurement_agrees_with_its_estimate(method, steps):
    """FSDP2 over one rank, measured on the CPU (a real gloo group, real kernels) and estimated
    (fake group, fake tensors): the same tracked bytes. LaMDA: real DTensor column surgery as B
    freezes, the same optimizer bytes step by step."""
    est = ok(run_cell(sharded_cell(method, world_size=1, **steps)))
    meas = ok(run_cell(sharded_cell(method, world_size=1, mode="measure", **steps)))
    assert meas["series"]["optimizer"] == est["series"]["optimizer"]
    assert meas["info"]["parallel"]["process_group"] == "real, one rank"
    for key in ("weights", "grads", "optimizer", "peak_forward", "peak"):
        assert meas["memory"][key] == pytest.approx(est["memory"][key], rel=0.01), key
    at_est, at_meas = est["memory"]["per_rank"]["at_peak"], meas["memory"]["per_rank"]["at_peak"]
    assert set(at_meas) == set(at_est)
    for key in at_est:
        assert at_meas[key] == pytest.approx(at_est[key], rel=0.02, abs=4096), key
