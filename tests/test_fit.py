"""lamda-bench fit: budgets, the search, and certified answers on a tiny model.

The planner tests at the top drive ``fit.plan`` with synthetic peaks (affine, quadratic, with
steps) and check its answer against a brute-force scan; the CLI tests below run real estimate
cells of tiny-llama through the launcher and re-check each answer with ``run_cell`` in this
process, independently of the planner's own bookkeeping.
"""

from __future__ import annotations

import json

import pytest

from lamda_bench import cli
from lamda_bench.fit.budgets import (CARDS, GIB, MIB, WORKSPACE_BYTES, BudgetError,
                                 parse_budget, parse_size)
from lamda_bench.suite.cell import Cell
from lamda_bench.fit.plan import FitError, plan

# ---- budgets ----------------------------------------------------------------------------------


def test_sizes_take_their_units_literally():
    assert parse_size("24GiB") == 24 * GIB
    assert parse_size("24GB") == 24 * 10**9
    assert parse_size("81559MiB") == 81559 * MIB
    assert parse_size("1.5 GiB") == 3 * GIB // 2
    assert parse_size("4096") == 4096
    for bad in ("24 gigs", "GiB", "-1GiB", "", "1e9"):
        with pytest.raises(BudgetError, match="expected a size"):
            parse_size(bad)


def test_budgets_by_card_name_are_taken_on_the_cards_terms():
    """A card budget holds each probe's memory.device_peak (the allocator model's reserved peak
    plus the card's context) against the card's total, with no flat margin (issue 39)."""
    h100 = parse_budget("h100-80gb")  # names are case-insensitive
    assert h100.card == "H100-80GB" and h100.bytes == 81559 * MIB and h100.on_card == "H100-80GB"
    assert h100.margin == 0 and h100.fits(h100.bytes) and not h100.fits(h100.bytes + 1)
    assert "memory.device_peak on H100-80GB" in h100.policy()
    sized = parse_budget("24GiB", card_terms="rtx4090-24gb")  # a size with a card's terms (fit --card)
    assert sized.on_card == "RTX4090-24GB" and sized.margin == 0 and "RTX4090-24GB" in sized.source
    plain = parse_budget("24GiB", reserve=GIB)
    assert plain.card is None and plain.margin == WORKSPACE_BYTES + GIB and plain.usable == 23 * GIB - WORKSPACE_BYTES
    assert "64 MiB" not in plain.policy() and str(WORKSPACE_BYTES) in plain.policy()
    assert all(card.total_mib > 1024 and card.source for card in CARDS.values())
    with pytest.raises(BudgetError, match="unknown card \\(did you mean 'H100-80GB'\\?\\)"):
        parse_budget("H100-90GB")
    with pytest.raises(BudgetError, match="nor a known card"):
        parse_budget("24 parsecs")
    with pytest.raises(BudgetError, match="leaves nothing above the margin"):
        parse_budget("64MiB")


# ---- the search on synthetic peaks --------------------------------------------------------------


def _fake_runner(peak_of, calls):
    def run(cells):
        calls.append(len(cells))
        return {c.id: {"status": "ok", "memory": {"peak": peak_of(c)}} for c in cells}

    return run


def _brute_force(peak_of_value, usable, multiple, limit):
    best = None
    for v in range(multiple, limit + 1, multiple):
        if peak_of_value(v) <= usable:
            best = v
        else:
            break
    return best


@pytest.mark.parametrize("shape", ["affine", "quadratic", "steps"])
@pytest.mark.parametrize("budget_gib", [3, 7.5, 20])
def test_the_search_finds_the_brute_force_answer_and_certifies_it(shape, budget_gib):
    peaks = {
        "affine": lambda b: 2 * GIB + b * 37 * MIB,
        "quadratic": lambda b: GIB + b * b * 3 * MIB,
        "steps": lambda b: GIB + ((b + 7) // 8) * 8 * 50 * MIB,  # allocations rounded to 8
    }[shape]
    budget = parse_budget(f"{budget_gib}GiB")
    calls = []
    base = Cell(workload="tiny-llama", method="lora", seq=64, mode="estimate")
    row, = plan([base], "batch", budget, _fake_runner(lambda c: peaks(c.batch), calls), limit=4096)
    want = _brute_force(peaks, budget.usable, 1, 4096)
    assert row["max_batch"] == want and row["verdict"] == "certified"
    assert row["next"] == want + 1 and budget.fits(row["peak_at_max"]) and not budget.fits(row["peak_at_next"])
    assert row["estimate"] is True and row["budget"] == budget.bytes and row["margin"] == budget.margin
    # A search, not a scan of the 4096 values: the bracket halves at least every other round.
    assert row["probes"] <= 4 + 2 * 12 and (shape == "steps" or row["probes"] <= 6)
    if shape == "affine":
        assert row["probes"] == 4  # two probes for the line, two to certify its guess


def test_the_search_in_multiples_up_to_its_limit():
    budget = parse_budget("100GiB")
    base = Cell(workload="tiny-llama", method="lora", batch=2, mode="estimate")
    row, = plan([base], "seq", budget, _fake_runner(lambda c: c.seq * MIB, []), multiple=64, limit=1000)
    assert row["max_seq"] == 960 and row["verdict"] == "fits up to the limit" and row["next"] is None
    row, = plan([base], "seq", parse_budget("1GiB"), _fake_runner(lambda c: c.seq * MIB, []), multiple=64,
                limit=4096)
    assert row["max_seq"] == 960 and row["next"] == 1024 and row["verdict"] == "certified"


def test_a_failed_probe_is_an_error_row_not_an_answer():
    base = Cell(workload="tiny-llama", method="lora", seq=64, mode="estimate")

    def run(cells):
        return {c.id: ({"status": "error", "error": "boom"} if c.batch == 2 else
                       {"status": "ok", "memory": {"peak": c.batch * MIB}}) for c in cells}

    row, = plan([base], "batch", parse_budget("1GiB"), run)
    assert row["verdict"] == "error" and "batch=2" in row["error"] and "boom" in row["error"]
    assert row["max_batch"] is None


def test_bad_search_settings_are_refused():
    base = Cell(workload="tiny-llama", method="lora", mode="estimate")
    with pytest.raises(FitError, match="--multiple"):
        plan([base], "batch", parse_budget("1GiB"), _fake_runner(lambda c: 0, []), multiple=0)
    with pytest.raises(FitError, match="below --multiple"):
        plan([base], "seq", parse_budget("1GiB"), _fake_runner(lambda c: 0, []), multiple=128, limit=64)


# ---- the command, on real estimate cells of tiny-llama ------------------------------------------


@pytest.fixture
def peak(shared_record):
    """An estimate's peak, run here in this process (not by the planner); once per distinct cell
    (conftest's shared_record: several tests ask for the same cell)."""

    def of(**kw) -> int:
        cell = Cell(**{**dict(workload="tiny-llama", method="lora", mode="estimate", device="auto"), **kw})
        rec = shared_record(cell.to_dict())
        assert rec["status"] == "ok", rec["error"]
        return rec["memory"]["peak"]

    return of


def _fit(tmp_path, *args):
    code = cli.main(["fit", "--workload", "tiny-llama", "--out", str(tmp_path), "--no-progress", *args])
    rows = json.loads((tmp_path / "fit.json").read_text()) if (tmp_path / "fit.json").exists() else None
    return code, rows


def test_fit_certifies_the_largest_batch_with_real_estimates(tmp_path, capsys, peak):
    low, high = peak(batch=1, seq=64), peak(batch=16, seq=64)
    budget = WORKSPACE_BYTES + (low + high) // 2  # a size in bytes: margin = the workspace only
    code, rows = _fit(tmp_path, "--method", "lora", "--seq", "64", "--budget", str(budget))
    out = capsys.readouterr().out
    assert code == 0
    row, = rows
    best = row["max_batch"]
    assert row["verdict"] == "certified" and 1 < best < 16 and row["next"] == best + 1
    # Certified independently: max fits, max + 1 does not.
    assert peak(batch=best, seq=64) == row["peak_at_max"] and row["peak_at_max"] + WORKSPACE_BYTES <= budget
    assert peak(batch=best + 1, seq=64) == row["peak_at_next"] and row["peak_at_next"] + WORKSPACE_BYTES > budget
    # Every probe is a record of results.jsonl; the plot exists; the answer says it is an estimate.
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert {r["id"] for r in records} == set(row["probe_ids"]) and len(records) == row["probes"]
    assert all(r["cell"]["mode"] == "estimate" and r["suite"] == "fit" for r in records)
    assert (tmp_path / "fit.png").stat().st_size > 0
    assert "estimates" in out and f"max batch {best} at seq 64" in out
    assert "predicted" not in out and "time_at_max" not in row  # no card: nothing said about time
    # A second fit into the same directory reuses every probe.
    code, again = _fit(tmp_path, "--method", "lora", "--seq", "64", "--budget", str(budget))
    assert code == 0 and again[0]["max_batch"] == best
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == len(records)


def test_fit_with_a_card_predicts_tokens_per_s_at_the_max_and_the_time_for_a_million_tokens(tmp_path, capsys):
    """A size budget with --card: the probe at the max carries the time model's prediction, which fit
    prints (row, table and fit.json) as predicted on the card with the record's own error band."""
    code, rows = _fit(tmp_path, "--method", "lora", "--seq", "16", "--budget", "24GiB", "--card", "RTX4090-24GB",
                      "--limit", "2")
    out = capsys.readouterr().out
    assert code == 0
    row, = rows
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    at_max = next(r for r in records if r["cell"]["batch"] == row["max_batch"])
    time, model = row["time_at_max"], at_max["info"]["time_model"]
    rate = at_max["time"]["tokens_per_s_predicted"]
    assert rate > 0 and time["tokens_per_s_predicted"] == rate
    assert time["step_s_predicted"] == at_max["time"]["step_s_predicted"]
    assert time["seconds_per_1m_tokens_predicted"] == pytest.approx(1e6 / rate)
    assert time["card"] == "RTX4090-24GB" and time["error_band"] == model["error_band"]
    band = model["error_band"]
    assert f"predicted on RTX4090-24GB at batch {row['max_batch']}" in out and f"{rate:,.0f}" in out
    assert "1M tokens (predicted)" in out and "not measurements" in out
    assert f"median {band['median_abs_error'] * 100:.1f}%, largest {band['max_abs_error'] * 100:.1f}%" in out


def test_fit_in_seq_mode_steps_by_the_multiple(tmp_path, peak):
    low, high = peak(batch=2, seq=32), peak(batch=2, seq=512)
    budget = WORKSPACE_BYTES + (low + high) // 2
    code, rows = _fit(tmp_path, "--method", "lamda", "--batch", "2", "--multiple", "32", "--budget", str(budget))
    assert code == 0
    row, = rows
    best = row["max_seq"]
    assert row["verdict"] == "certified" and best % 32 == 0 and 32 <= best < 512 and row["next"] == best + 32
    assert row["limit"] == 512  # tiny-llama's max positions
    assert peak(method="lamda", batch=2, seq=best) + WORKSPACE_BYTES <= budget
    assert peak(method="lamda", batch=2, seq=best + 32) + WORKSPACE_BYTES > budget


def test_a_method_that_cannot_fit_batch_1_says_so(tmp_path, capsys, peak):
    budget = WORKSPACE_BYTES + peak(method="full", batch=1, seq=64) - 1
    code, rows = _fit(tmp_path, "--method", "full", "--seq", "64", "--budget", str(budget))
    assert code == 0
    row, = rows
    assert row["verdict"] == "does not fit" and row["max_batch"] is None and row["next"] == 1
    assert row["probes"] == 1 or row["peak_at_next"] + WORKSPACE_BYTES > budget
    assert "full: does not fit even batch 1 at seq 64" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--method", "lora", "--seq", "64", "--budget", "lots"], "--budget 'lots'"),
    (["--method", "nope", "--seq", "64", "--budget", "1GiB"], "nope"),
    (["--method", "lora", "--seq", "0", "--budget", "1GiB"], "seq"),
    (["--method", "lora", "--seq", "64", "--budget", "1GiB", "--set", "batch=2"], "--set batch"),
    (["--method", "lora", "--seq", "64", "--budget", "1GiB", "--multiple", "0"], "--multiple"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    code, rows = _fit(tmp_path, *args)
    err = capsys.readouterr().err
    assert code == 2 and rows is None and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "results.jsonl").exists()


# ---- per card: data-parallel layouts ---------------------------------------------------------


def test_fit_under_fsdp2_answers_per_card(tmp_path, capsys, peak):
    sharded = dict(world_size=4, parallel="fsdp2")
    low, high = peak(batch=1, seq=64, **sharded), peak(batch=16, seq=64, **sharded)
    assert high < peak(batch=16, seq=64)  # a card holds less than one device alone
    budget = WORKSPACE_BYTES + (low + high) // 2
    code, rows = _fit(tmp_path, "--method", "lora", "--seq", "64", "--budget", str(budget),
                      "--world-size", "4", "--parallel", "fsdp2")
    assert code == 0
    row, = rows
    best = row["max_batch"]
    assert row["verdict"] == "certified" and row["world_size"] == 4 and row["parallel"] == "fsdp2"
    assert row["cell"]["world_size"] == 4 and row["cell"]["parallel"] == "fsdp2"
    # Certified independently on rank 0 of the sharded job: max fits one card, max + 1 does not.
    assert peak(batch=best, seq=64, **sharded) == row["peak_at_max"] <= budget - WORKSPACE_BYTES
    assert peak(batch=best + 1, seq=64, **sharded) == row["peak_at_next"] > budget - WORKSPACE_BYTES
    assert "Per card, 4 rank(s) under fsdp2" in capsys.readouterr().out


def test_fit_under_ddp_adds_the_gradient_buckets_to_one_device(tmp_path):
    from lamda_bench.runner import run_cell

    rec = run_cell(Cell(workload="tiny-llama", method="lora", mode="estimate", device="auto", batch=1, seq=64).to_dict())
    one_card = rec["memory"]["peak"] + rec["memory"]["grads"]  # the replica's step and its buckets
    code, rows = _fit(tmp_path, "--method", "lora", "--seq", "64", "--budget", str(WORKSPACE_BYTES + one_card - 1),
                      "--world-size", "8", "--parallel", "ddp")
    row, = rows
    assert code == 0 and row["verdict"] == "does not fit" and row["peak_at_next"] == one_card
    assert row["cell"]["parallel"] == "none" and row["parallel"] == "ddp" and row["world_size"] == 8


@pytest.mark.parametrize("args, message", [
    (["--world-size", "2"], "--world-size 2 needs --parallel"),
    (["--world-size", "0", "--parallel", "fsdp2"], "--world-size 0"),
    (["--parallel", "ddp", "--method", "lamda"], "--parallel ddp with lamda"),
    (["--set", "world_size=2"], "--set world_size"),
])
def test_bad_layouts_are_one_line_and_exit_2(tmp_path, capsys, args, message):
    base = ["--seq", "64", "--budget", "1GiB"] + ([] if "--method" in args else ["--method", "lora"])
    code, rows = _fit(tmp_path, *base, *args)
    err = capsys.readouterr().err
    assert code == 2 and rows is None and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "results.jsonl").exists()


def test_a_card_row_without_a_prediction_says_why_and_a_row_without_a_card_says_nothing():
    from lamda_bench.fit.output import time_text

    row = {"method": "lora", "axis": "batch", "max_batch": 3, "world_size": 1}
    assert time_text(row) is None
    row["time_at_max"] = {"step_s_predicted": None, "tokens_per_s_predicted": None, "card": "H100-80GB",
                          "not_predicted": "the probes' predictions do not extrapolate"}
    assert time_text(row) == "lora: no predicted time at batch 3: the probes' predictions do not extrapolate"
