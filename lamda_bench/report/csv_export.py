"""CSV export of the flat table: one row per record, one column per dotted record field."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from .escape import csv_field
from .records import flat_columns, flatten


def write_csv(records: list[dict[str, Any]], path: str | Path) -> Path:
    """Write ``records`` flattened (see ``records.flatten``) to ``path``; raw units, empty
    cells where a field is null or absent. Text that a spreadsheet would run as a formula
    is neutralised (``escape.csv_field``), header names included."""
    path = Path(path)
    rows = [flatten(r) for r in records]
    columns = flat_columns(rows)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([csv_field(c) for c in columns])
        for row in rows:
            writer.writerow([csv_field("" if row.get(c) is None else row[c]) for c in columns])
    return path
