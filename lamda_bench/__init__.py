"""lamda-bench: how much memory and compute a fine-tuning adapter really costs.

``lamda_bench.run(suite_or_cells, out=...)`` and ``lamda_bench.load(dir)`` return results as a
pandas DataFrame (see ``lamda_bench.api``); ``lamda_bench.estimate(model, peft_config=...,
training_args=..., seq=...)`` answers one cell (``lamda_bench.one_cell.api``); they are imported on first use, so ``import
lamda_bench`` stays cheap (no torch, no pandas).
"""

from . import library_noise

library_noise.install()  # before anything imports bitsandbytes (see library_noise.py)

__version__ = "0.1.0"
__all__ = ["load", "run", "estimate"]


def __getattr__(name: str):
    if name == "estimate":
        from .one_cell.api import estimate

        return estimate
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'lamda_bench' has no attribute {name!r}")
