"""Optimizers as the HF Trainer names them (issue 25): real optimizer steps on a tiny real LLaMA
on this CPU against the same cell on fake tensors and against the closed forms of
``analytic/optimizers.py``; bitsandbytes' fake-tensor state against its real state; paged state
apart from the device peak; refusals; the old ``adamw`` ids; ``fit --optimizer``."""

import json
from pathlib import Path

import pytest
import torch

from lamda_bench import cli
from lamda_bench.analytic import optimizers as forms
from lamda_bench.optimizers import OPTIMIZERS
from lamda_bench.runner import run_cell
from lamda_bench.suite.cell import Cell, CellError
from lamda_bench.suite.parse import SuiteError, parse_suite

REPO = Path(__file__).resolve().parents[1]


def ok(rec):
    assert rec["status"] == "ok", rec["error"]
    return rec


def tiny(optimizer, mode, **kw):
    cell = dict(workload="tiny-llama", method="full", batch=1, seq=8, dtype="bf16", device="cpu", mode=mode,
                warmup=1, steps=0, optimizer=optimizer)
    return ok(run_cell({**cell, **kw}))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_real_step_estimate_and_closed_form_agree_to_the_byte(name):
    real, fake = tiny(name, "measure"), tiny(name, "estimate")
    assert real["memory"]["optimizer"] == fake["memory"]["optimizer"] == real["predicted"]["memory"]["optimizer"]
    assert fake["predicted"]["memory"]["optimizer"] == fake["memory"]["optimizer"]
    # the step's temporaries are the same kernels' outputs in both modes
    assert real["memory"]["peak"] == fake["memory"]["peak"]
    if name not in ("sgd",):
        assert real["memory"]["optimizer"] > 0


def test_the_closed_forms_per_parameter():
    big = (4096, 4096)
    assert forms.per_param("adamw_torch", big, 2) == pytest.approx(4.0, abs=1e-6)
    assert forms.per_param("adamw_bnb_8bit", big, 2) == 2 + 8 / 256  # 1 B per moment + fp32 absmax per 256
    assert forms.per_param("lion_8bit", big, 2) == 1 + 4 / 256
    assert forms.per_param("paged_adamw_32bit", big, 2, paged_target=True) == 8.0  # fp32 whatever the param
    assert forms.per_param("adafactor", big, 2) == pytest.approx((2 * 4096 + 1) * 4 / 4096 ** 2)
    # under min_8bit_size (4096 elements) bitsandbytes keeps fp32 state
    assert forms.per_param("adamw_bnb_8bit", (4095,), 2) == 8.0
    paged = forms.state_bytes("paged_adamw_8bit", [forms.Tensor(big, 2)], paged_target=True)
    assert paged == {"optimizer": 2 * 4 * 4096 ** 2 // 256 + 2 * 1024, "optimizer_paged": 2 * 4096 ** 2}
    cpu = forms.state_bytes("paged_adamw_8bit", [forms.Tensor(big, 2)], paged_target=False)
    assert cpu["optimizer_paged"] == 0 and cpu["optimizer"] == sum(paged.values())


def test_bitsandbytes_state_on_fake_tensors_is_its_real_state():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from lamda_bench.optimizers.build import build

    def state(fake: bool):
        mode = FakeTensorMode() if fake else None
        with mode if fake else torch.no_grad():
            w = torch.nn.Parameter(torch.zeros(64, 96)) if not fake else torch.nn.Parameter(torch.empty(64, 96))
            b = torch.nn.Parameter(torch.zeros(96)) if not fake else torch.nn.Parameter(torch.empty(96))
            opt = build("adamw_bnb_8bit", [w, b], 1e-3)
            for p in (w, b):
                p.grad = torch.zeros_like(p)
            opt.step()
            return {i: {k: (tuple(v.shape), v.dtype) if torch.is_tensor(v) else v for k, v in opt.state[p].items()}
                    for i, p in enumerate((w, b))}

    real = state(False)
    assert real == state(True)
    assert real[0]["state1"] == ((64, 96), torch.uint8) and real[0]["absmax1"] == ((24,), torch.float32)
    assert real[1]["state1"] == ((96,), torch.float32)  # under min_8bit_size


def test_paged_state_is_its_own_category_outside_the_device_peak():
    cell = dict(workload="linear", method="full", d_in=512, d_out=512, layers=2, batch=2, seq=8, dtype="fp32",
                device="auto", mode="estimate", warmup=1, steps=0)
    paged = ok(run_cell({**cell, "optimizer": "paged_adamw_8bit"}))
    plain = ok(run_cell({**cell, "optimizer": "adamw_bnb_8bit"}))
    m = paged["memory"]
    n = 512 * 512
    assert m["optimizer_paged"] == 2 * 2 * n  # two 512x512 weights, two uint8 moments each
    assert m["optimizer"] + m["optimizer_paged"] == plain["memory"]["optimizer"]
    assert paged["predicted"]["memory"]["optimizer_paged"] == m["optimizer_paged"]
    assert plain["memory"]["optimizer_paged"] == 0
    assert plain["memory"]["peak"] - m["peak"] == m["optimizer_paged"]  # not in the device's live bytes
    # a CPU run: bitsandbytes does not page there, and the record says so by a zero
    cpu = ok(run_cell({**cell, "optimizer": "paged_adamw_8bit", "device": "cpu"}))
    assert cpu["memory"]["optimizer_paged"] == 0 and cpu["memory"]["optimizer"] == plain["memory"]["optimizer"]


def test_muon_says_which_parameters_went_where():
    rec = tiny("muon", "estimate")
    split = rec["info"]["optimizer_split"]
    assert split["muon"]["tensors"] > 0 and split["adamw"]["tensors"] > 0
    assert split["muon"]["elements"] + split["adamw"]["elements"] == rec["params"]["trainable"]


@pytest.mark.parametrize("name, words", [
    ("adamw_bnb8bit", ["did you mean 'adamw_bnb_8bit'", "known:"]),
    ("adamw_torch_8bit", ["torchao", "pip install torchao"]),
    ("galore_adamw", ["galore_torch"]),
    ("rmsprop", ["does not model"]),
])
def test_unknown_or_missing_names_are_one_line(name, words):
    with pytest.raises(CellError) as e:
        Cell(workload="tiny-llama", method="full", optimizer=name).validate()
    assert "\n" not in str(e.value) and all(w in str(e.value) for w in words)
    with pytest.raises(SuiteError) as e:
        parse_suite(f'[[sweep]]\nworkload = "tiny-llama"\nmethod = "full"\noptimizer = "{name}"\n')
    assert words[0] in str(e.value)


@pytest.mark.parametrize("method, optimizer, extra, words", [
    ("lora-fa", "adamw_bnb_8bit", {}, "its own optimizer"),
    ("lamda", "adafactor", {}, "LaMDA's freezing"),
    ("lora", "adafactor", {"parallel": "fsdp2"}, "parallel 'fsdp2'"),
])
def test_an_optimizer_that_cannot_serve_the_method_is_refused(method, optimizer, extra, words):
    cell = dict(workload="tiny-llama", method=method, r=4, batch=1, seq=8, device="cpu", mode="estimate",
                warmup=1, steps=0, optimizer=optimizer, **extra)
    rec = run_cell(cell)
    assert rec["status"] == "error" and words in rec["error"] and "\n" not in rec["error"]


def test_adamw_keeps_every_recorded_id():
    """The committed LLaMA2-7B records (all adamw) keep the ids their suite's cells get today."""
    from lamda_bench.suite.parse import load_suite

    recs = [json.loads(line) for line in (REPO / "reports" / "llama7b-cpu" / "results.jsonl").read_text().splitlines()]
    adamw = [r for r in recs if r["cell"]["optimizer"] == "adamw"]
    assert len(adamw) >= 61  # every cell recorded before the optimizer names existed
    ids = {c.id for c in load_suite(REPO / "suites" / "llama7b.toml").cells if c.optimizer == "adamw"}
    assert {r["id"] for r in adamw} == ids
    base = dict(workload="llama2-7b", method="full")
    assert Cell(**base, optimizer="adamw_torch").id != Cell(**base).id  # a name of its own, its own id


def test_fit_takes_an_optimizer_and_counts_paged_state_unless_evictable(tmp_path, capsys):
    def fit(out, *extra):
        code = cli.main(["fit", "--workload", "linear", "--method", "full", "--set", "d_in=512", "--set", "d_out=512",
                         "--set", "layers=2", "--set", "dtype=fp32", "--optimizer", "paged_adamw_8bit", "--seq", "8",
                         "--budget", "64GiB", "--limit", "2", "--out", str(out), "--no-progress", *extra])
        assert code == 0
        return json.loads((out / "fit.json").read_text())[0]

    counted = fit(tmp_path / "a")
    assert "counted in each peak" in capsys.readouterr().out
    evictable = fit(tmp_path / "b", "--paged-evictable")
    assert "left out of each peak" in capsys.readouterr().out
    assert counted["cell"]["optimizer"] == "paged_adamw_8bit" and counted["paged_optimizer_counted"]
    assert counted["peak_at_max"] - evictable["peak_at_max"] == 2 * 2 * 512 * 512


def test_the_one_cell_estimate_names_paged_state_and_its_closed_form(tmp_path, capsys):
    argv = ["estimate", "--workload", "linear", "--method", "full", "--d-in", "512", "--d-out", "512", "--layers", "2",
            "--dtype", "fp32", "--batch", "2", "--seq", "8", "--optimizer", "paged_adamw_8bit", "--out", str(tmp_path),
            "--no-progress"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "optimizer=paged_adamw_8bit" in out
    assert f"not in the peak): 1.00 MiB ({2 * 2 * 512 * 512} B)" in out
    row, = [ln for ln in out.splitlines() if ln.startswith("paged optimizer state ") and "1.00 MiB  " in ln]
    assert row.split()[-1] == "equal"  # the closed-form table's row


def test_list_optimizers_names_every_catalogue_entry(capsys):
    assert cli.main(["list", "optimizers"]) == 0
    out = capsys.readouterr().out
    assert all(f"\n{name} " in out for name in OPTIMIZERS)
    assert "adamw_torch_4bit (torchao>=0.4" in out


def test_sgd_is_what_the_trainer_builds():
    from lamda_bench.optimizers.build import trainer_class_and_kwargs

    assert trainer_class_and_kwargs("sgd", 3e-4) == (torch.optim.SGD, {"lr": 3e-4})
