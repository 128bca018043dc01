"""Data-parallel cells: world_size / parallel keys, FSDP2 rank-0 estimates on a fake process
group, the sharded closed forms, and a cross-check against torch's FSDPMemTracker."""

import pytest
import torch

from lamda_bench import analytic
from lamda_bench.cell import Cell
from lamda_bench.runner import run_cell
from lamda_bench.suite import SuiteError, parse_suite

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


def test_lamda_split_freezing_works_on_sharded_blocks():
    kw = dict(warmup=2, steps=4)
    single = ok(run_cell(sharded_cell("lamda", world_size=1, parallel="none", **kw)))
    rec = ok(run_cell(sharded_cell("lamda", **kw)))
    # B is replicated (left out of the sharding), so freezing follows the same schedule.
    assert rec["series"]["trainable"] == single["series"]["trainable"]
    assert rec["series"]["trainable"][-1] < rec["series"]["trainable"][0]
    assert rec["info"]["parallel"]["replicated_params"] > 0
    assert rec["memory"]["optimizer"] == rec["predicted"]["sharded"]["optimizer"]
    assert rec["series"]["optimizer"][-1] < single["series"]["optimizer"][-1]  # S's state is sharded


def test_measure_and_ddp_estimates_are_refused_in_one_line():
    rec = run_cell(sharded_cell(world_size=2, mode="measure"))
    assert rec["status"] == "error" and "needs 2 GPU(s)" in rec["error"] and "\n" not in rec["error"]
    rec = ok(run_cell(sharded_cell(world_size=2, mode="auto", steps=0)))
    assert rec["cell"]["mode"] == "estimate" and "multi-GPU" in rec["info"]["mode_reason"]
    rec = run_cell(sharded_cell(parallel="ddp"))
    assert rec["status"] == "error" and "'ddp' cannot be estimated" in rec["error"]


# ---- cross-check against torch's own FSDP memory tracker ------------------------------------


def test_rank_bytes_agree_with_fsdp_mem_tracker(lora_records):
    fsdp_tracker = pytest.importorskip("torch.distributed._tools.fsdp2_mem_tracker")
    from lamda_bench import parallel, workloads
    from lamda_bench.runner.build import prepare, prime_adam
    from lamda_bench.runner.resolve import resolve
    from lamda_bench.fake import to_fake

    _, rec = lora_records
    c = Cell.from_dict(sharded_cell())
    applied, _ = prepare(resolve(c, timeline=False), "meta")
    fake_mode = to_fake(applied.model, "cpu")
    with parallel.fake_job(W, "cpu") as mesh, fake_mode:
        parallel.shard(applied, mesh, True)
        inputs = workloads.make_inputs(c, "cpu")
        optimizer = applied.make_optimizer(c.lr)
        prime_adam(optimizer)  # the estimate's optimizer state before its step
        tracker = fsdp_tracker.FSDPMemTracker(applied.model, optimizer)
        tracker.track_inputs((inputs["input_ids"],))
        with tracker:
            workloads.compute_loss(c, applied.model, inputs).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        (peak,) = tracker.get_tracker_snapshot("peak").values()
    by = {getattr(k, "name", str(k)): v for k, v in peak.items()}
    # Persistent bytes: the same storages, counted by two independent trackers.
    assert by["SHARDED_PARAM"] + by["BUFFER"] == rec["memory"]["weights"]
    assert by["OPT"] == rec["memory"]["optimizer"]
    # The step's peak: the two trackers classify transients differently but must see the same high point.
    assert by["Total"] == pytest.approx(rec["memory"]["peak"], rel=0.15)


def test_world_size_one_measurement_agrees_with_its_estimate():
    """FSDP2 over one rank, measured on the CPU (a real gloo group, real kernels) and estimated
    (fake group, fake tensors): the same tracked bytes."""
    est = ok(run_cell(sharded_cell(world_size=1)))
    meas = ok(run_cell(sharded_cell(world_size=1, mode="measure")))
    assert meas["info"]["parallel"]["process_group"] == "real, one rank"
    for key in ("weights", "grads", "optimizer", "peak_forward", "peak"):
        assert meas["memory"][key] == pytest.approx(est["memory"][key], rel=0.01), key
    at_est, at_meas = est["memory"]["per_rank"]["at_peak"], meas["memory"]["per_rank"]["at_peak"]
    assert set(at_meas) == set(at_est)
    for key in at_est:
        assert at_meas[key] == pytest.approx(at_est[key], rel=0.02, abs=4096), key
