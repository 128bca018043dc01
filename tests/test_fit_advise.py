"""``fit --advise``: the lever search, its pruning, and advice on real estimates of tiny-llama.

The search's logic is checked against brute force on a synthetic monotone peak (every
combination estimated); the command is run on real estimate cells of tiny-llama with budgets
placed between real peaks, and each fitting combination it reports is estimated again here
(``run_cell``) to check its peak, that it fits and its FLOP overhead.
"""

from __future__ import annotations

import json

import pytest

from lamda_bench import cli
from lamda_bench.fit.advise import Advice, Counter
from lamda_bench.fit.budgets import WORKSPACE_BYTES, parse_budget
from lamda_bench.fit.levers import LEVERS, LeverError, apply_change, parse_levers
from lamda_bench.suite.cell import Cell

BASE = Cell(workload="tiny-llama", method="lora", r=8, seq=64, mode="estimate")


# ---- the lever table -------------------------------------------------------------------------


def test_levers_are_cell_key_changes_with_a_cost_kind():
    for lever in LEVERS.values():
        assert lever.cost in ("measured", "caveat") and (lever.monotone or not lever.premise)
        for change in lever.steps(BASE):
            cell = apply_change(BASE, change)
            cell.validate()
            assert cell.id != BASE.id and set(change) <= set(lever.keys)
    assert LEVERS["gradient_checkpointing"].cost == "measured"  # its cost is recomputation: FLOPs
    assert [s["r"] for s in LEVERS["r"].steps(BASE)] == [4, 2, 1]
    assert LEVERS["quant"].steps(Cell(workload="tiny-llama", method="full")) == []  # full trains the base
    assert LEVERS["autocast_adapter_dtype"].steps(Cell(workload="tiny-llama", method="lora", dtype="fp32")) == []


def test_the_8bit_optimizer_lever_goes_only_where_the_optimizer_is_modelled():
    steps = LEVERS["optimizer"].steps
    assert steps(BASE) == [{"optimizer": "adamw_bnb_8bit"}, {"optimizer": "paged_adamw_8bit"}]
    assert steps(Cell(workload="tiny-llama", method="full")) == steps(BASE)
    assert steps(Cell(workload="tiny-llama", method="lamda")) == []  # LaMDA's freezing slices the state
    assert steps(Cell(workload="tiny-llama", method="lora-fa")) == []  # its own optimizer
    assert steps(Cell(workload="tiny-llama", method="lora", optimizer="adafactor")) == []
    assert "optimizer" in LEVERS["world_size"].excludes and "world_size" in LEVERS["optimizer"].excludes


def test_parse_levers_restricts_and_refuses_unknown_names():
    assert [lv.name for lv in parse_levers("r, gradient_checkpointing", "batch")] == ["r", "gradient_checkpointing"]
    assert "seq" not in [lv.name for lv in parse_levers(None, "seq")]  # the searched axis is no lever
    with pytest.raises(LeverError, match="did you mean 'quant'"):
        parse_levers("quantize", "batch")
    with pytest.raises(LeverError, match="axis"):
        parse_levers("seq", "seq")


# ---- the search on a synthetic monotone peak --------------------------------------------------


def _synthetic_peak(cell: Cell) -> int:
    peak = 1000 + cell.r * 10 + cell.seq * 2
    if cell.gradient_checkpointing:
        peak -= 60
    return peak


def _fake(peak_of, calls):
    def run(cells):
        calls.extend(c.id for c in cells)
        return {c.id: {"status": "ok", "memory": {"peak": peak_of(c)},
                       "flops": {"forward": c.seq * c.r, "backward": 2 * c.seq * c.r + 7 * c.gradient_checkpointing}}
                for c in cells}

    return run


@pytest.mark.parametrize("usable", [1100, 1150, 1180, 1090, 900])
def test_the_search_finds_the_cheapest_fitting_combinations_with_fewer_estimates(usable):
    budget = parse_budget(str(usable + WORKSPACE_BYTES))
    levers = parse_levers("gradient_checkpointing,r,seq", "batch")
    search = Advice(BASE, levers, budget, top=100, max_estimates=10**6)
    calls: list[str] = []
    search.search(Counter(_fake(_synthetic_peak, calls), set()))
    combos = search.combos()
    fits = {c for c in combos if budget.fits(_synthetic_peak(search.cell(c)))}
    minimal = {c for c in fits if not any(f != c and search.below(f, c) for f in fits)}
    assert {o.combo for o in search.fitting()} == minimal  # brute force agrees
    assert len(set(calls)) == len(calls) and len(calls) <= len(combos)
    assert all(budget.fits(o.peak) for o in search.fitting()) and not search.violations()
    if not fits:
        assert search.stopped.startswith("no ceiling fits") and len(calls) == 2  # the cell and its one ceiling
    else:
        assert len(calls) < len(combos)  # pruned


def test_a_broken_premise_is_reported():
    levers = parse_levers("gradient_checkpointing", "batch")
    search = Advice(BASE, levers, parse_budget(str(WORKSPACE_BYTES + 10)), top=1)
    search.search(Counter(_fake(lambda c: 100 if c.gradient_checkpointing else 60, []), set()))
    assert search.stopped.startswith("no ceiling fits")
    assert search.violations() and "gradient_checkpointing=True" in search.violations()[0]


def test_levers_that_exclude_each_other_are_never_combined():
    search = Advice(BASE, parse_levers("quant,world_size", "batch"), parse_budget("1GiB"))
    combos = search.combos()
    assert all(not (q and w) for q, w in combos) and len(combos) == 1 + 2 + 3
    assert sorted(search.ceilings()) == [(0, 1), (0, 2), (0, 3), (2, 0)]


# ---- the command, on real estimates of tiny-llama --------------------------------------------


def _peak(**kw) -> dict:
    from lamda_bench.runner import run_cell

    rec = run_cell(Cell(**{**dict(workload="tiny-llama", method="lora", seq=64, mode="estimate"), **kw}).to_dict())
    assert rec["status"] == "ok", rec["error"]
    return rec


def _fit(tmp_path, *args):
    code = cli.main(["fit", "--workload", "tiny-llama", "--method", "lora", "--seq", "64", "--out", str(tmp_path),
                     "--no-progress", *args])
    rows = json.loads((tmp_path / "fit.json").read_text()) if (tmp_path / "fit.json").exists() else None
    return code, rows


def test_advice_finds_a_measured_and_a_caveat_lever_that_fit(tmp_path, capsys):
    base = _peak()
    gc = _peak(gradient_checkpointing=True)
    half = _peak(options=(("autocast_adapter_dtype", False), ("dropout", 0.0)))
    usable = (base["memory"]["peak"] + max(gc["memory"]["peak"], half["memory"]["peak"])) // 2
    code, rows = _fit(tmp_path, "--budget", str(WORKSPACE_BYTES + usable),
                      "--levers", "gradient_checkpointing,autocast_adapter_dtype")
    out = capsys.readouterr().out
    assert code == 0
    adv = rows[0]["advice"]
    assert rows[0]["verdict"] == "does not fit" and adv["verdict"] == "fits"
    assert adv["levers"] == ["gradient_checkpointing", "autocast_adapter_dtype"]
    by = {tuple(f["changes"]): f for f in adv["fitting"]}
    assert set(by) == {("gradient_checkpointing",), ("autocast_adapter_dtype",)}  # both together: not minimal
    g, a = by[("gradient_checkpointing",)], by[("autocast_adapter_dtype",)]
    flops = lambda rec: rec["flops"]["forward"] + rec["flops"]["backward"]  # noqa: E731
    assert g["peak"] == gc["memory"]["peak"] and g["extra_flops"] == flops(gc) - flops(base) > 0
    assert g["caveats"] == {} and a["caveats"].keys() == {"autocast_adapter_dtype"}
    assert g["command"].endswith("--seq 64 --set gradient_checkpointing=true")  # runnable as a fit
    assert a["peak"] == half["memory"]["peak"] and a["extra_flops"] == flops(half) - flops(base)
    assert adv["fitting"][0] is not None and adv["fitting"][0]["changes"] == {"gradient_checkpointing": True}
    for f in adv["fitting"]:  # a runnable cell: the same id, and it fits
        cell = Cell.from_dict(f["cell"])
        assert cell.id == f["id"] and f["headroom"] == usable - f["peak"] >= 0 and f["max_batch"] >= 1
    # base (reused from fit) + the ceiling + 2 at level 1; gc + half-precision adapters is never estimated
    assert adv["lever_estimates"] == 4 and adv["stopped"] == "every combination searched"
    assert "extra FLOPs/step (measured)" in out and "caveat autocast_adapter_dtype:" in out
    assert "(predicted)" not in out and all("step_s_predicted" not in f for f in adv["fitting"])  # no card: no time
    assert (tmp_path / "fit-advise.png").stat().st_size > 0


def test_with_a_card_each_lever_is_priced_in_predicted_seconds_beside_its_flops(tmp_path, capsys):
    """--card beside a size: each fitting lever's predicted s/step and its change against the cell
    as asked, from the two records' own predictions; labelled as predicted, with the error band."""
    card = dict(seq=512, card="RTX4090-24GB")
    base, gc = _peak(**card), _peak(gradient_checkpointing=True, **card)
    half = _peak(options=(("autocast_adapter_dtype", False), ("dropout", 0.0)), **card)
    usable = (base["memory"]["device_peak"] + max(gc["memory"]["device_peak"], half["memory"]["device_peak"])) // 2
    code = cli.main(["fit", "--workload", "tiny-llama", "--method", "lora", "--seq", "512", "--out", str(tmp_path),
                     "--no-progress", "--budget", str(usable), "--card", "RTX4090-24GB",
                     "--levers", "gradient_checkpointing,autocast_adapter_dtype"])
    out = capsys.readouterr().out
    adv = json.loads((tmp_path / "fit.json").read_text())[0]["advice"]
    assert code == 0 and adv["verdict"] == "fits"
    by = {tuple(f["changes"]): f for f in adv["fitting"]}
    step = lambda rec: rec["time"]["step_s_predicted"]  # noqa: E731
    for f, rec in ((by[("gradient_checkpointing",)], gc), (by[("autocast_adapter_dtype",)], half)):
        assert f["step_s_predicted"] == step(rec) and f["step_s_missing"] is None
        assert f["extra_step_s_predicted"] == pytest.approx(step(rec) - step(base))
        assert f["extra_step_s_relative"] == pytest.approx(step(rec) / step(base) - 1)
        assert f"({f['extra_step_s_relative']:+.1%})" in out
    assert by[("gradient_checkpointing",)]["extra_step_s_predicted"] > 0  # the recomputed forward costs time
    band = base["info"]["time_model"]["error_band"]
    version = base["info"]["time_model"]["time_model_version"]
    assert "s/step (predicted)" in out and f"predicted s/step: the step-time model v{version} on RTX4090-24GB" in out
    assert f"median {band['median_abs_error'] * 100:.1f}%" in out and "not a measurement" in out


def test_a_lever_without_a_prediction_gets_no_seconds_and_says_why():
    from lamda_bench.fit.advise import Outcome, seconds_cost

    timed = {"step_s_predicted": 0.5, "tokens_per_s_predicted": 100.0}
    base = Outcome((0,), BASE, {}, 10, 10, False, time=timed)
    missing = Outcome((1,), BASE, {"r": 4}, 5, 9, True,
                      time={"step_s_predicted": None, "not_predicted": "the probes' predictions do not extrapolate"})
    cost = seconds_cost(missing, base, BASE.batch * BASE.seq)
    assert cost["extra_step_s_predicted"] is None and cost["step_s_predicted"] is None
    assert cost["step_s_missing"] == "this change: the probes' predictions do not extrapolate"
    fine = seconds_cost(Outcome((1,), BASE, {"r": 4}, 5, 9, True, time={**timed, "step_s_predicted": 0.75}),
                        base, BASE.batch * BASE.seq)
    assert fine["extra_step_s_relative"] == pytest.approx(0.5) and fine["step_s_missing"] is None


def test_advice_says_when_no_allowed_lever_is_enough(tmp_path, capsys):
    smallest = _peak(r=1)["memory"]["peak"]
    budget = str(WORKSPACE_BYTES + smallest - 1)
    code, rows = _fit(tmp_path, "--budget", budget, "--advise", "--levers", "r")
    out = capsys.readouterr().out
    adv = rows[0]["advice"]
    assert code == 0 and adv["verdict"] == "none of the allowed levers is enough" and adv["fitting"] == []
    assert adv["ceilings"] == [{"changes": {"r": 1}, "peak": smallest, "fits": False, "error": None}]
    assert adv["lever_estimates"] == 2 and "none of the allowed levers is enough" in out
    code, rows = _fit(tmp_path, "--budget", budget)  # without --advise: a pointer, every probe reused
    out = capsys.readouterr().out
    assert "`--advise` searches the levers" in out and "advice" not in rows[0]


@pytest.mark.parametrize("args, message", [
    (["--levers", "gradient_checkpoint"], "did you mean 'gradient_checkpointing'"),
    (["--levers", ","], "--levers"),
    (["--advise", "--advise-top", "0"], "--advise-top"),
])
def test_bad_advice_flags_are_one_line_and_exit_2(tmp_path, capsys, args, message):
    code, rows = _fit(tmp_path, "--budget", "1GiB", *args)
    err = capsys.readouterr().err
    assert code == 2 and rows is None and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "results.jsonl").exists()


def test_a_suggested_command_keeps_the_flags_fit_was_given_and_changes_the_optimizer_by_its_flag():
    """--optimizer, --paged-evictable and --trace reach each suggestion's command; an optimizer
    lever's change goes through --optimizer (which would override a --set of the same key)."""
    from lamda_bench.cli import build_parser
    from lamda_bench.fit.advise import command_flags
    from lamda_bench.fit.cli import _command

    args = build_parser().parse_args(["fit", "--workload", "tiny-llama", "--method", "full", "--budget", "1GiB",
                                      "--seq", "64", "--optimizer", "adamw_torch", "--paged-evictable",
                                      "--trace", "full", "--advise"])
    row = {"axis": "batch", "method": "full"}
    assert command_flags({"optimizer": "paged_adamw_8bit"}) == ["--optimizer", "paged_adamw_8bit"]
    words = _command(args, row, ["--optimizer", "paged_adamw_8bit"]).split()
    assert words[words.index("--optimizer") + 1] == "paged_adamw_8bit" and words.count("--optimizer") == 1
    assert "--paged-evictable" in words and words[words.index("--trace") + 1] == "full"
    plain = _command(args, row, ["--set", "gradient_checkpointing=true"]).split()
    assert plain[plain.index("--optimizer") + 1] == "adamw_torch"
