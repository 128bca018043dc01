"""The page and its server: three tabs (Ask, Fit, Browse) on one ``gr.Blocks``, one cell at a
time (every event that runs cells shares one queue slot, the others wait and see their place),
bound to 127.0.0.1 unless ``--host`` says otherwise. Started warm: torch, transformers and peft
are imported and the launcher's fork server is started before the page opens, so an answer pays
for its cell only."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

TITLE = "lamda-bench"
INTRO = ("What will this adapter cost? Every figure is an **estimate**: the real training step run on fake "
         "tensors (no memory, any size), the same cell `lamda-bench estimate` runs. Answers are appended to "
         "`{out}/results.jsonl` (`lamda-bench report {out}` reads them); an answer already recorded is read back.")


def warm_up() -> float:
    """Import the libraries a cell needs, start the fork server cells are forked from and wait for
    its first fork (the server imports its preload after it starts: a first answer would wait for
    that); seconds."""
    import importlib
    import multiprocessing.forkserver

    from ..launch import forkserver

    start = time.perf_counter()
    importlib.import_module(forkserver.PRELOAD_MODULE)  # torch, transformers, peft, lamda_bench.runner
    if forkserver.available():
        ctx = forkserver.context()
        multiprocessing.forkserver.ensure_running()
        first = ctx.Process(target=int)  # returns once the server has imported its preload and forked
        first.start()
        first.join()
    return time.perf_counter() - start


def build(site) -> Any:
    """The page (not launched)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no network calls from the page's server
    import gradio as gr

    from . import ui_ask, ui_browse, ui_fit

    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(f"# lamda-bench\n\n{INTRO.format(out=site.out)}")
        with gr.Tab("Ask"):
            ui_ask.build(gr, site)
        with gr.Tab("Fit"):
            ui_fit.build(gr, site)
        with gr.Tab("Browse"):
            ui_browse.build(gr, site)
    demo.queue(default_concurrency_limit=1)
    return demo


def site_of(dirs: list[Path]):
    """Answers go to the first directory given (else ./lamda-bench-app), checked writable now."""
    from ..paths import writable_dir
    from .page import DEFAULT_OUT, Site

    out = writable_dir(Path(dirs[0]) if dirs else DEFAULT_OUT, "OUT_DIR")
    return Site(out=Path(out), dirs=[Path(d) for d in dirs])


def start(dirs: list[Path], host: str = "127.0.0.1", port: int | None = None, block: bool = True, quiet: bool = False):
    """Build, warm and launch; returns the launched page (``block=False``: the caller closes it)."""
    site = site_of(dirs)
    demo = build(site)
    seconds = warm_up()
    if not quiet:
        print(f"lamda-bench app: warm in {seconds:.1f} s; answers in {site.out / 'results.jsonl'}", flush=True)
    demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=quiet, ssr_mode=False,
                show_error=False, allowed_paths=[str(site.out.resolve())])
    return demo


def serve(args) -> int:
    start(list(args.dirs), host=args.host, port=args.port)
    return 0
