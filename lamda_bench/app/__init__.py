"""``lamda-bench app``: a local web page for the estimate, fit and report questions (docs/app.md).

Gradio is an optional extra (``pip install -e '.[app]'``), imported only when the verb runs, so
every other verb works without it. The page calls the same code as the verbs (``one_cell``,
``fit``, ``report``): an answer in the page is the answer on the command line.
"""

from __future__ import annotations

from ..errors import UserError

INSTALL_HINT = "the app needs gradio: install with pip install -e '.[app]'"


class AppError(UserError):
    """Bad input to the app (a form value, a results directory), or the extra not installed."""


def add_app_arguments(parser) -> None:
    from pathlib import Path

    parser.add_argument("dirs", nargs="*", type=Path, metavar="OUT_DIR",
                        help="results directories to browse; the first also receives the page's answers "
                             "(default ./lamda-bench-app)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=None, help="port (default: gradio's, 7860 or the next free one)")
    parser.set_defaults(func=run_app)


def run_app(args) -> int:
    """The ``app`` verb: check the extra and the answer directory (before the slow imports), then
    build and serve the page until interrupted."""
    from pathlib import Path

    from ..paths import writable_dir

    if args.dirs:
        writable_dir(Path(args.dirs[0]), "OUT_DIR")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise AppError(INSTALL_HINT) from None
    from .server import serve

    return serve(args)
