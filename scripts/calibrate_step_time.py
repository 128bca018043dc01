"""Fit efficiency.py's two calibration factors (gemm_calibration, memory_calibration) on the
in-sample H100 cells: a grid search minimising the median |error| of predicted step time.
Prints the grid's best; the chosen values are then written into efficiency.py by hand.

usage: PYTHONPATH=. python scripts/calibrate_step_time.py [CACHE]
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import step_time_eval as ev  # noqa: E402

from lamda_bench.card import efficiency as eff  # noqa: E402


def median_error(points, cache) -> float:
    return statistics.median(abs(ev.predict(p, cache)["step_s"] - p["measured_s"]) / p["measured_s"] for p in points)


def main(argv) -> None:
    cache = Path(argv[0]) if argv else Path("/tmp/st_cache")
    points = ev.in_sample()
    saved = dict(eff.TABLE)
    best = None
    for g in [x / 20 for x in range(14, 22)]:
        for m in [x / 20 for x in range(12, 22)]:
            eff.TABLE["gemm_calibration"] = replace(saved["gemm_calibration"], value=g)
            eff.TABLE["memory_calibration"] = replace(saved["memory_calibration"], value=m)
            err = median_error(points, cache)
            if best is None or err < best[0]:
                best = (err, g, m)
    eff.TABLE.update(saved)
    print(f"best median |error| {best[0]:.2%} at gemm_calibration {best[1]}, memory_calibration {best[2]}")


if __name__ == "__main__":
    main(sys.argv[1:])
