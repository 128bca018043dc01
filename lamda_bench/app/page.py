"""What every tab of the page shares: where answers are written, the choices the forms offer
(from the registries, not copied), and the one way an error reaches the page (one line)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import UserError, one_line

DEFAULT_OUT = Path("lamda-bench-app")


@dataclass
class Site:
    """The app's directories: ``out`` receives Ask answers (``out/fit`` the Fit probes);
    ``dirs`` are offered by Browse."""

    out: Path
    dirs: list[Path] = field(default_factory=list)

    @property
    def fit_out(self) -> Path:
        return self.out / "fit"

    def browse_choices(self) -> list[str]:
        seen: dict[str, None] = {}
        for d in [*self.dirs, self.out, self.fit_out]:
            if (d / "results.jsonl").is_file() or d == self.out:
                seen[str(d)] = None
        return list(seen)


def choices() -> dict[str, list[str]]:
    """The forms' menus: catalogue workloads, methods, dtypes, precisions, quant formats,
    optimizers and cards, as the registries hold them."""
    from ..card.cards import CARDS
    from ..methods import all_methods
    from ..model.workloads import WORKLOADS
    from ..suite.cell import DTYPES, OPTIMIZERS, PRECISIONS, QUANTS

    return {"workload": list(WORKLOADS), "method": list(all_methods()), "dtype": list(DTYPES),
            "precision": list(PRECISIONS), "quant": list(QUANTS), "optimizer": list(OPTIMIZERS),
            "card": [""] + [c.name for c in CARDS.values()]}


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A handler whose ``UserError`` (and missing file) reaches the page as one line in an error
    box, never a traceback; anything else is a bug and keeps its traceback in the server log."""
    import gradio as gr

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (UserError, FileNotFoundError) as e:
            from ..terminal import printable

            raise gr.Error(printable(" ".join(one_line(e).split())), print_exception=False, title="lamda-bench") \
                from None
    return wrapped
