"""A sweep's expansion: its axes (one list of values per key) into the combinations it runs,
with ``zip`` groups advancing together instead of forming a product. Values are checked by
the parser (``suite.py``) before they get here."""

from __future__ import annotations

import itertools
from typing import Any, Iterator

from .values import BadValue, hint


def zip_groups(zips: Any, axes: dict[str, list[Any]]) -> list[tuple[str, ...]]:
    """The ``zip`` key's groups, each in table order; BadValue (the parser adds file and key)."""
    if not isinstance(zips, list) or not all(
        isinstance(g, list) and g and all(isinstance(k, str) for k in g) for g in zips
    ):
        raise BadValue('expected a list of key lists, e.g. zip = [["r", "alpha"]]')
    seen: set[str] = set()
    groups = []
    for group in zips:
        for key in group:
            if key not in axes:
                raise BadValue(f"{key!r} is not a key of this sweep{hint(key, axes)}")
            if key in seen:
                raise BadValue(f"{key!r} appears in more than one zip group")
            seen.add(key)
        lengths = {k: len(axes[k]) for k in group}
        if len(set(lengths.values())) > 1:
            shown = ", ".join(f"{k} has {n}" for k, n in lengths.items())
            raise BadValue(f"zipped axes need equal lengths ({shown})")
        # Keep the group in the order its keys appear in the table (product order).
        groups.append(tuple(sorted(group, key=list(axes).index)))
    return groups


def combinations(axes: dict[str, list[Any]], groups: list[tuple[str, ...]]) -> Iterator[dict[str, Any]]:
    """Every combination of the axes, the last key varying fastest. Each axis or zipped group
    is one factor of the product, in key order."""
    factors: list[tuple[tuple[str, ...], list[tuple[Any, ...]]]] = []
    grouped = {k for g in groups for k in g}
    for key in axes:
        if key in grouped:
            group = next(g for g in groups if key in g)
            if key == group[0]:
                factors.append((group, list(zip(*(axes[k] for k in group)))))
        else:
            factors.append(((key,), [(v,) for v in axes[key]]))
    for choice in itertools.product(*(vals for _, vals in factors)):
        combo: dict[str, Any] = {}
        for (keys, _), values in zip(factors, choice):
            combo.update(zip(keys, values))
        yield combo
