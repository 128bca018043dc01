"""The Fit tab's layout and events: the ``fit`` question (largest batch or seq within a budget,
per method), its table and plot, and ``--advise``'s levers when a method does not fit."""

from __future__ import annotations

from typing import Any

from . import fit_tab
from .page import Site, choices, user_errors


def build(gr: Any, site: Site) -> None:
    menu = choices()
    with gr.Row():
        with gr.Column(scale=1):
            model = gr.Dropdown(menu["workload"], value="llama2-7b", label="model", allow_custom_value=True)
            methods = gr.Dropdown(menu["method"], value=["lora", "lamda"], multiselect=True, label="methods")
            budget = gr.Textbox(value="24GiB", label="budget: a size (24GiB, 24GB) or a card (H100-80GB)")
            with gr.Row():
                axis = gr.Radio(["seq", "batch"], value="seq", label="fixed (the other is searched)")
                value = gr.Number(value=1024, precision=0, label="its value")
            with gr.Row():
                r = gr.Number(value=8, precision=0, label="r")
                targets = gr.Textbox(value="all", label="targets (preset or a,b,c)")
            with gr.Row():
                optimizer = gr.Dropdown([""] + menu["optimizer"], value="", label="optimizer (default adamw)",
                                        allow_custom_value=True)
                card = gr.Dropdown(menu["card"], value="", label="card terms for a size budget")
            advise = gr.Checkbox(value=False, label="advise: search the levers when a method does not fit")
            extra = gr.Textbox(label="more cell keys (KEY=VALUE per line, as --set)", lines=2)
            go = gr.Button("Fit", variant="primary")
        with gr.Column(scale=2):
            table = gr.Dataframe(headers=fit_tab.TABLE_HEADERS, label="largest that fits, per method",
                                 interactive=False)
            plot = gr.Image(label="fit.png", type="filepath")
            # shown only with advice: an empty image box read as "advice found nothing"
            advice_plot = gr.Image(label="fit-advise.png", type="filepath", visible=False)
            text = gr.Code(label="lamda-bench fit", language=None)

    @user_errors
    def run(*values: Any) -> tuple:
        a = fit_tab.answer(fit_tab.fit_argv(*values), site.fit_out)
        cmd = "lamda-bench fit " + " ".join(a.argv) + f" --out {site.fit_out}"
        advice = gr.update(value=a.advice_plot and str(a.advice_plot), visible=a.advice_plot is not None)
        return a.rows, a.plot and str(a.plot), advice, a.text + "\n# " + cmd

    go.click(run, [model, methods, budget, axis, value, r, targets, optimizer, card, advise, extra],
             [table, plot, advice_plot, text], api_name="fit", concurrency_id="cell", concurrency_limit=1)
