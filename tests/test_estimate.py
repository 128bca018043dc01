"""``lamda-bench estimate`` and ``lamda_bench.estimate`` run for real: a trainer config's answer
has the bytes of the hand-written suite cell run by ``lamda-bench run``; asking twice runs
nothing the second time; the Python API gives the same cell. Each test runs estimate cells
(tens of seconds on a busy machine): ``slow``."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from lamda_bench import cli
from lamda_bench.results.files import load_records
from lamda_bench.suite.parse import load_suite, parse_suite
from lamda_bench.trainer_config import read_document

CONFIGS = Path(__file__).resolve().parent / "trainer_configs"
BLOCKS = ("params", "memory", "flops", "predicted")

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name, suffix", [("axolotl_qlora_tiny", ".yml"), ("llamafactory_lora_tiny", ".yaml")])
def test_trainer_config_answer_is_the_suite_cells_bytes(tmp_path, capsys, name, suffix):
    config, toml = CONFIGS / f"{name}{suffix}", CONFIGS / f"{name}.toml"
    assert cli.main(["estimate", "--from", str(config), "--out", str(tmp_path / "est"), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert cli.main(["run", str(toml), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    capsys.readouterr()
    (est,) = load_records(tmp_path / "est" / "results.jsonl")
    (ran,) = load_records(tmp_path / "run" / "results.jsonl")
    (cell,) = load_suite(toml).cells
    assert est["status"] == ran["status"] == "ok" and est["id"] == ran["id"] == cell.id
    for block in BLOCKS:
        assert est[block] == ran[block], block
    # every key of both files is modelled or mapped, so no NOTE leads the answer; axolotl's QLoRA path
    # (prepare_model_for_kbit_training, then norms and embeddings cast back) maps to kbit_prepare = false
    assert not text.splitlines()[0].startswith("NOTE:")
    assert f"peak memory (estimate): " in text and f"({est['memory']['peak']} B)" in text
    assert "trainable parameters: " in text and "closed form" in text and "every key's fate" in text
    fates = json.loads((tmp_path / "est" / "trainer-configs" / f"{cell.id}.json").read_text())
    assert fates["id"] == cell.id and {k["key"] for k in fates["keys"]} >= set(read_document(config))
    if name.startswith("axolotl"):
        kbit = next(k for k in fates["keys"] if "kbit" in k["key"])
        assert kbit["fate"] == "mapped" and fates["cell"]["kbit_prepare"] is False and fates["note"] is None, kbit

    # asked again: nothing runs, the record is the one already there
    assert cli.main(["estimate", "--from", str(config), "--out", str(tmp_path / "est"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == cell.id
    assert len(load_records(tmp_path / "est" / "results.jsonl")) == 1


def test_python_api_gives_the_same_cell(tmp_path):
    import lamda_bench
    from peft import LoraConfig
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path / "unused"), per_device_train_batch_size=2,
                             gradient_checkpointing=True, report_to="none")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        rec = lamda_bench.estimate("tiny-llama", peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
                                   training_args=args, seq=64, out=tmp_path / "api")
    from lamda_bench.suite.cell import OPTIMIZERS

    toml = ('[[sweep]]\nworkload = "tiny-llama"\nmethod = "lora"\nr = 4\nalpha = 8\ntargets = ["q_proj", "v_proj"]\n'
            'batch = 2\nseq = 64\ngradient_checkpointing = true\nmode = "estimate"\n')
    if args.optim.value in OPTIMIZERS:  # TrainingArguments' default optim (adamw_torch_fused) goes to the cell
        toml += f'optimizer = "{args.optim.value}"\n'
    assert rec["status"] == "ok" and rec["id"] == parse_suite(toml).cells[0].id
    assert rec["cell"]["optimizer"] == (args.optim.value if args.optim.value in OPTIMIZERS else "adamw")
    # TrainingArguments' default optim is a Trainer name: named in the warning unless the cell knows it
    if args.optim.value not in OPTIMIZERS:
        assert any("optim" in str(w.message) for w in seen)
    frame = lamda_bench.estimate("tiny-llama", peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
                                 training_args=args, seq=64, out=tmp_path / "api", as_frame=True)
    assert list(frame["memory.peak"]) == [rec["memory"]["peak"]]


def test_full_size_one_cell_without_a_suite(tmp_path, capsys):
    argv = ["estimate", "--workload", "llama3.1-8b", "--method", "lora", "--r", "16", "--batch", "2", "--seq", "2048",
            "--out", str(tmp_path), "--no-progress"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("workload=llama3.1-8b method=lora r=16")
    assert "peak memory (estimate): " in out and "peak by phase: forward" in out
