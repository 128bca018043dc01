"""The Browse tab's layout and events: pick a results directory, filter and sort its records,
the report's headline and plots for the selection, and a comparison of two directories."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from . import browse
from .page import Site, user_errors


def build(gr: Any, site: Site) -> None:
    dirs = site.browse_choices()
    plots_root = Path(tempfile.mkdtemp(prefix="lamda-bench-app-"))
    with gr.Row():
        directory = gr.Dropdown(dirs, value=dirs[0] if dirs else None, allow_custom_value=True,
                                label="results directory (pick one or type a path)", scale=3)
        sort = gr.Dropdown(["", "memory.peak", "params.trainable", "r", "batch", "seq", "method"], value="",
                           allow_custom_value=True, label="sort by (a cell key or a record path)", scale=2)
        descending = gr.Checkbox(value=False, label="descending", scale=1)
    where = gr.Textbox(label="filter: KEY=VALUE per line (a cell key, a method option or a dotted path), "
                             "as compare --where", lines=2, placeholder="method=lora\nr=16")
    go = gr.Button("Show", variant="primary")
    count = gr.Markdown()
    table = gr.Dataframe(label="records", interactive=False, wrap=True)
    headline = gr.Markdown()
    gallery = gr.Gallery(label="plots of the selection", columns=2, height="auto")
    with gr.Accordion("compare two directories", open=False):
        with gr.Row():
            dir_a = gr.Dropdown(dirs, allow_custom_value=True, label="A")
            dir_b = gr.Dropdown(dirs, allow_custom_value=True, label="B")
        cmp_where = gr.Textbox(label="only cells where (KEY=VALUE per line)", lines=1)
        go_cmp = gr.Button("Compare")
        comparison = gr.Markdown()

    @user_errors
    def show(path: str, sort_key: str, desc: bool, conditions: str) -> tuple:
        records, warned = browse.load(path)
        chosen = browse.order(browse.select(records, conditions), str(sort_key or "").strip(), bool(desc))
        headers, rows = browse.table(chosen, str(sort_key or "").strip())
        note = f"{len(chosen)} of {len(records)} records" + (
            f"; {len(warned)} warning(s): " + "; ".join(warned[:3]) if warned else "")
        keys = ", ".join(f"`{k}`" for k in browse.keys(records))
        import pandas

        return (note + f"\n\nkeys to filter or sort by: {keys}", pandas.DataFrame(rows, columns=headers),
                "## Headline\n\n" + browse.headline(chosen), browse.plots(chosen, path, plots_root))

    @user_errors
    def compare(a: str, b: str, conditions: str) -> str:
        return browse.compare(a, b, conditions)

    go.click(show, [directory, sort, descending, where], [count, table, headline, gallery], api_name="browse")
    go_cmp.click(compare, [dir_a, dir_b, cmp_where], comparison, api_name="compare")
