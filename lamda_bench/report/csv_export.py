"""CSV export of the flat table: one row per record, one column per dotted record field."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from .records import flat_columns, flatten


def write_csv(records: list[dict[str, Any]], path: str | Path) -> Path:
    """Write ``records`` flattened (see ``records.flatten``) to ``path``; raw units, empty
    cells where a field is null or absent."""
    path = Path(path)
    rows = [flatten(r) for r in records]
    columns = flat_columns(rows)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return path
