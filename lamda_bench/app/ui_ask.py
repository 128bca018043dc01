"""The Ask tab's layout and events: the form (or an uploaded trainer config) -> ``ask.answer``
-> summary, breakdown table and bar, the estimate verb's text, every key's fate, the record."""

from __future__ import annotations

from typing import Any

from . import ask, breakdown
from .page import Site, choices, user_errors

BREAKDOWN_HEADERS = ["part", "bytes", "exact bytes", "share"]


def _outputs(a: ask.Answer, site: Site) -> tuple:
    record = a.record
    lines = [f"**{record.get('status')}** · `{record.get('id')}` · "
             + ("already recorded: read back, not run again" if a.reused else "run now")
             + f" · written to `{site.out / 'results.jsonl'}`"]
    if a.headline:
        lines.append(a.headline)
    if record.get("status") != "ok":
        lines.append(f"**error:** {' '.join(str(record.get('error')).split())}")
    else:
        lines += [f"peak: **{breakdown.fmt_bytes(breakdown.get(record, 'memory.peak'))}** (estimate: fake tensors, "
                  "the real training step traced; not measured)"]
        card = breakdown.card_line(record)
        if card:
            lines.append(card)
        lines.append(breakdown.flops_line(record))
        lines += [f"- {n}" for n in breakdown.notes(a.text)]
    lines.append(f"Same answer from the command line: `{ask.command_line(a.argv, site.out)}`")
    return ("\n\n".join(lines), breakdown.rows(record) if record.get("status") == "ok" else [],
            breakdown.figure(record), a.text, "\n".join(a.fates), record)


def build(gr: Any, site: Site) -> None:
    """Lay out the tab inside the current ``gr.Tab`` and wire its two buttons."""
    menu = choices()
    with gr.Row():
        with gr.Column(scale=1):
            model = gr.Dropdown(menu["workload"], value="llama2-7b", label="model: catalogue name, config.json path "
                                "or cached hub id", allow_custom_value=True)
            method = gr.Dropdown(menu["method"], value="lora", label="method", allow_custom_value=True)
            with gr.Row():
                r = gr.Number(value=16, precision=0, label="r")
                targets = gr.Textbox(value="all", label="targets (preset or a,b,c)")
            with gr.Row():
                batch = gr.Number(value=4, precision=0, label="batch")
                seq = gr.Number(value=1024, precision=0, label="seq")
            with gr.Row():
                dtype = gr.Dropdown(menu["dtype"], value="bf16", label="dtype")
                precision = gr.Dropdown(menu["precision"], value="pure", label="precision")
            with gr.Row():
                quant = gr.Dropdown(menu["quant"], value="none", label="quant")
                optimizer = gr.Dropdown(menu["optimizer"], value="adamw", label="optimizer", allow_custom_value=True)
            with gr.Row():
                checkpointing = gr.Checkbox(value=False, label="gradient checkpointing")
                card = gr.Dropdown(menu["card"], value="", label="card (optional)")
            extra = gr.Textbox(label="more cell keys (KEY=VALUE per line, as --set)", lines=2)
            go = gr.Button("Estimate", variant="primary")
            with gr.Accordion("From a trainer config (as estimate --from)", open=False):
                config = gr.File(label="axolotl / LLaMA-Factory YAML or TrainingArguments JSON", type="filepath")
                adapter = gr.File(label="PEFT adapter_config.json", type="filepath")
                file_extra = gr.Textbox(label="keys that win over the file (KEY=VALUE per line)", lines=2)
                go_file = gr.Button("Estimate the uploaded config")
        with gr.Column(scale=2):
            summary = gr.Markdown("Choose the keys and press Estimate.")
            plot = gr.Plot(label="peak by category")
            table = gr.Dataframe(headers=BREAKDOWN_HEADERS, label="breakdown", interactive=False)
            with gr.Accordion("the estimate verb's answer", open=False):
                text = gr.Code(label="lamda-bench estimate", language=None)
            fates = gr.Textbox(label="an uploaded config's keys and the fate of each", lines=1, max_lines=40,
                               placeholder="(upload a trainer config below: each of its keys and what became of it)")
            with gr.Accordion("record (results.jsonl line)", open=False):
                record = gr.JSON(label="record")
    outputs = [summary, table, plot, text, fates, record]

    @user_errors
    def from_form(*values: Any) -> tuple:
        return _outputs(ask.answer(ask.form_argv(*values), site.out), site)

    @user_errors
    def from_file(config_path: Any, adapter_path: Any, keys: str) -> tuple:
        return _outputs(ask.answer(ask.file_argv(config_path, adapter_path, keys), site.out), site)

    go.click(from_form, [model, method, r, targets, batch, seq, dtype, precision, quant, optimizer, checkpointing,
                         card, extra], outputs, api_name="ask", concurrency_id="cell", concurrency_limit=1)
    go_file.click(from_file, [config, adapter, file_extra], outputs, api_name="ask_file", concurrency_id="cell",
                  concurrency_limit=1)
