"""The time model's measured error, read from its validation file (``validation.json``, written by
``scripts/step_time_eval.py``): every predicted step time carries the out-of-sample band, so a
reader sees how far the model was off on public measurements nobody here made."""

from __future__ import annotations

import functools
import json
from pathlib import Path

VALIDATION = Path(__file__).with_name("validation.json")


@functools.lru_cache(maxsize=1)
def error_band() -> dict:
    """Out of sample: median and largest absolute relative error, the number of points and card
    kinds, and the time model version they were measured at."""
    data = json.loads(VALIDATION.read_text(encoding="utf-8"))
    oos = data["out_of_sample"]
    points = [p for p in oos.get("points", []) if not p.get("excluded") and p.get("error") is not None]
    return {"median_abs_error": oos.get("median_abs_error"), "max_abs_error": oos.get("max_abs_error"),
            "points": len(points), "cards": sorted({p.get("card") for p in points if p.get("card")}),
            "time_model_version": data.get("time_model_version"), "source": "docs/step-time.md"}
