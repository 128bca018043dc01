"""``lamda-bench app`` driven through its own client API (gradio_client), one app per module:
an Ask answer is ``lamda-bench estimate``'s record for the same keys (bytes and id); a bad key is
one line; an uploaded trainer config is ``estimate --from``'s cell with every key's fate; a browse
filter on a committed results directory. Skipped without the app extra (``pip install -e '.[app]'``);
.ci/run installs it. The headless-browser check is a script: scripts/app_screenshots.py."""

from __future__ import annotations

import importlib.util
import json
import socket
from pathlib import Path

import pytest

# Checked, not imported: gradio takes ~5 s to import, and every xdist worker collects this module;
# the app fixture imports it (through the server) on the worker that runs these tests.
if importlib.util.find_spec("gradio") is None:
    pytest.skip("gradio is not installed: pip install -e '.[app]'", allow_module_level=True)
gradio_client = pytest.importorskip("gradio_client")

from lamda_bench import cli  # noqa: E402
from lamda_bench.results.files import load_records  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TINY = dict(model="tiny-llama", method="lora", r=4, targets="all", batch=2, seq=64, dtype="bf16",
            precision="pure", quant="none", optimizer="adamw", checkpointing=False, card="", extra="")
BROWSED = REPO / "reports" / "moe"  # committed: 8 estimate records, 7 of them LoRA or LaMDA


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """(client, the app's answer directory): the page launched in this process, warm."""
    from lamda_bench.app.server import start

    out = tmp_path_factory.mktemp("app") / "answers"
    port = _free_port()
    demo = start([out, BROWSED], port=port, block=False, quiet=True)
    client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
    yield client, out
    client.close()
    demo.close()


def _ask(client, **keys):
    values = {**TINY, **keys}
    return client.predict(*values.values(), api_name="/ask")


def test_ask_answer_is_the_estimate_verbs_record(app, tmp_path, capsys):
    client, out = app
    summary, table, plot, text, fates, record = _ask(client)
    assert cli.main(["estimate", "--workload", "tiny-llama", "--method", "lora", "--r", "4", "--batch", "2",
                     "--seq", "64", "--out", str(tmp_path), "--json"]) == 0
    expected = json.loads(capsys.readouterr().out)
    assert record["status"] == expected["status"] == "ok" and record["id"] == expected["id"]
    assert record["cell"] == expected["cell"]
    for block in ("params", "memory", "flops", "predicted"):
        assert record[block] == expected[block], block
    assert f"`{expected['id']}`" in summary and "run now" in summary and "NOTE" in summary
    assert [row[0] for row in table["data"][:5]] == [f"at the peak: {c}" for c in
                                                     ("weights", "grads", "optimizer", "activations", "temporaries")]
    assert plot is not None and f"({expected['memory']['peak']} B)" in text
    # written with the results writer, so `lamda-bench report` reads it; asked again, read back
    assert [r["id"] for r in load_records(out / "results.jsonl")] == [expected["id"]]
    again = _ask(client)
    assert "already recorded" in again[0] and again[5] == record
    assert len(load_records(out / "results.jsonl")) == 1


@pytest.mark.parametrize("keys, says", [
    (dict(method="lorx"), "unknown method 'lorx' (did you mean 'lora'?)"),
    (dict(r=0), "0 is less than 1"),
    (dict(model="tiny-lama"), "tiny-lama"),
])
def test_a_bad_key_is_one_line_in_the_page(app, keys, says):
    client, out = app
    with pytest.raises(gradio_client.exceptions.AppError) as e:
        _ask(client, **keys)
    message = str(e.value)
    assert says in message and "\n" not in message and "Traceback" not in message


def test_cells_run_one_at_a_time_the_next_sees_its_place(app):
    """Two asks at once: the second waits in the queue, told its place, while the first runs."""
    import time

    client, _ = app
    first = client.submit(*{**TINY, "r": 2, "seq": 32}.values(), api_name="/ask")
    time.sleep(0.3)
    second = client.submit(*{**TINY, "r": 3, "seq": 32}.values(), api_name="/ask")
    seen = []
    while not second.done():
        status = second.status()
        seen.append((status.code.name, status.rank))
        time.sleep(0.1)
    assert ("IN_QUEUE", 0) in seen, seen  # rank 0: next in line behind the running cell
    assert first.result()[5]["status"] == second.result()[5]["status"] == "ok"


def test_a_bad_fit_budget_is_one_line(app):
    client, _ = app
    with pytest.raises(gradio_client.exceptions.AppError) as e:
        client.predict("tiny-llama", ["lora"], "2MiB", "seq", 64, 8, "all", "", "", False, "", api_name="/fit")
    assert "leaves nothing above the margin" in str(e.value) and "\n" not in str(e.value)


def test_an_uploaded_trainer_config_is_estimate_from(app, tmp_path, capsys):
    client, _ = app
    config = tmp_path / "llamafactory.yaml"
    text = (REPO / "tests" / "trainer_configs" / "llamafactory_lora_tiny.yaml").read_text()
    config.write_text(text.replace("../../lamda_bench/model/configs/tiny-llama.json",
                                   str(REPO / "lamda_bench" / "model" / "configs" / "tiny-llama.json")))
    summary, _, _, _, fates, record = client.predict(gradio_client.handle_file(str(config)), None, "",
                                                     api_name="/ask_file")
    from lamda_bench.one_cell.cli import build_from, gather_keys
    from lamda_bench.app.ask import estimate_parser

    args = estimate_parser().parse_args(["--from", str(config), "--out", str(tmp_path / "cli")])
    origins: dict = {}
    keys, translation = gather_keys(args, origins)
    assert record["status"] == "ok" and record["id"] == build_from(keys, origins).id
    assert "[mapped] lora_rank: 4" in fates and "cutoff_len" in fates
    assert fates.count("\n") + 1 == len(translation.lines())


def test_browse_filters_a_committed_results_dir(app):
    client, _ = app
    count, table, headline, gallery = client.predict(str(BROWSED), "memory.peak", True, "method=lora",
                                                     api_name="/browse")
    records = [json.loads(line) for line in (BROWSED / "results.jsonl").read_text().splitlines()]
    lora = [r for r in records if r["cell"]["method"] == "lora"]
    assert count.startswith(f"{len(lora)} of {len(records)} records")
    rows = table["data"]
    assert {row[table["headers"].index("method")] for row in rows} == {"lora"}
    peaks = [row[table["headers"].index("memory.peak")] for row in rows]
    assert peaks == sorted(peaks, reverse=True)
    assert "Headline" in headline and gallery
    with pytest.raises(gradio_client.exceptions.AppError) as e:
        client.predict(str(BROWSED), "", False, "nosuchkey=1", api_name="/browse")
    assert "nosuchkey" in str(e.value) and "\n" not in str(e.value)


def test_a_fit_answers_with_its_table_and_plot_and_shows_no_advice_box_unasked(app):
    client, _ = app
    table, plot, advice, text = client.predict("tiny-llama", ["lora"], "1GiB", "seq", 64, 8, "all", "", "", False, "",
                                               api_name="/fit")
    rows = table["data"] if isinstance(table, dict) else table
    assert len(rows) == 1 and rows[0][0] == "lora"
    assert plot and Path(plot).stat().st_size > 0
    # the advice image comes back hidden and empty (an empty box read as "advice found nothing")
    assert advice == {"__type__": "update", "visible": False, "value": None}, advice
    assert "lamda-bench fit" in text and "--advise" not in text
