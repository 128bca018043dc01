"""Trace cells' op lists at the probe depths (3, 4, 5) into a cache directory, one JSON file per
cell and depth: the input of calibrate_step_time.py / validate_step_time.py.

usage: python scripts/trace_cells.py CELLS.json CACHE_DIR   (CELLS.json: {"name": cell, ...})
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from trace_ops import trace_ops  # noqa: E402

DEPTHS = (3, 4, 5)


def main(cells_file: str, cache: str) -> None:
    cells = json.loads(Path(cells_file).read_text())
    out = Path(cache)
    out.mkdir(parents=True, exist_ok=True)
    for name, cell in cells.items():
        for depth in DEPTHS:
            path = out / f"{name}.L{depth}.json"
            if path.exists():
                continue
            t0 = time.perf_counter()
            ops = trace_ops({**cell, "layers": depth})
            path.write_text(json.dumps(ops))
            print(f"{name} L{depth}: {len(ops)} distinct ops, {time.perf_counter() - t0:.1f}s", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
