"""Suite TOML -> a validated list of ``Cell``.

A suite file has a ``[suite]`` table (``name``, ``description``), an optional ``[defaults]``
table and one or more ``[[sweep]]`` tables. Each sweep is merged over the defaults (the
sweep wins), then expanded:

- A list value is an axis; a sweep is the product of its axes (the last key varies
  fastest); the suite is the union of its sweeps, deduplicated by cell id, order kept.
  A list in ``[defaults]`` is an axis of every sweep that does not override the key.
- ``workload``: a catalogue name, or a config.json path (file or folder; relative to the
  suite file's folder) or a cached hub id, read and checked here; the cell carries the
  absolute path (``workloads.resolve_reference``).
- ``targets``: a string is a preset (``"all"``, ``"attn"``, ``"mlp"``, ``"peft"``) or a single
  module-name suffix, checked when the model is built; a list of module names is ONE setting
  (PEFT's ``target_modules``); an axis is a list of presets or of lists, and an ambiguous
  mix is refused (``suite.conventions``). ``dtype`` takes torch's names as aliases.
- ``zip = [["r", "alpha"]]``: the named axes advance together (equal lengths required)
  instead of forming a product.
- ``exclude = [{method = "full", r = 16}]``: drop combinations where every named key has
  that value (a list value in an exclude entry matches any of its elements).
- Method-specific keys (``init``, ``freeze_fraction``, ...) apply to the cells whose method
  defines them and are ignored by the others (so one sweep can mix lora and lamda); a key
  set in a sweep that no method of that sweep defines is an error (in ``[defaults]``, a
  key only has to belong to some known method). Options are resolved (defaults filled)
  by the method, so a cell's id is stable. For the same reason a linear cell gets its
  d_in/d_out defaults written in, and a full fine-tuning cell (which has no rank) gets
  the Cell defaults for r and alpha, so sweeping r yields one full cell.

Every problem raises ``SuiteError`` with one line: ``<file>: <where>: <key>: <problem>``.
Checks that need a built model (r larger than a model layer's shape) happen at run time
and give an error record; r larger than a linear workload's d is caught here.

Beside this parser: ``suite.values`` (what each key's value may be), ``suite.sweep`` (a
sweep's axes into combinations, ``zip``), ``suite.conventions`` (aliases, targets axes),
``suite.text`` (reading the TOML safely); the cell's own rules are ``Cell.validate``.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from .cell import Cell
from .conventions import AmbiguousTargets, key_hint, targets_settings
from .text import MAX_NESTING, TooDeep, read_suite_text, toml_loads
from .sweep import combinations, zip_groups
from .values import CELL_KEYS, BadValue, hint
from ..errors import UserError

LINEAR_WORKLOAD = "linear"
SWEEP_ONLY_KEYS = ("zip", "exclude")
TOP_LEVEL_KEYS = ("suite", "defaults", "sweep")
SUITE_KEYS = ("name", "description")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")  # used with fullmatch: "$" matches before "\n"



class SuiteError(UserError):
    """A suite file that cannot be run; the message is one line naming file and key."""


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    path: str
    cells: tuple[Cell, ...]


# ---- the registries a suite is checked against ------------------------------------------

@dataclass
class Catalog:
    """Known methods (name -> Method) and workloads (name -> workload). The default reads the
    real registries; tests may pass small ones."""

    methods: Mapping[str, Any]
    workloads: Mapping[str, Any]
    linear_default_dim: int = 4096
    # (reference, suite folder) -> what the cell carries, for a workload that is no catalogue name
    resolve_workload: Callable[[str, Path], str] | None = None
    # (cell, its method) -> (key, problem) for what the model's config rules out (suite.model_checks)
    check_cell: Callable[[Cell, Any], tuple[str, str] | None] | None = None

    @classmethod
    def default(cls) -> "Catalog":
        from ..methods import all_methods
        from ..model.workloads import LINEAR_DEFAULT_DIM, WORKLOADS, resolve_reference
        from .model_checks import problem

        return cls(methods=all_methods(), workloads=WORKLOADS, linear_default_dim=LINEAR_DEFAULT_DIM,
                   resolve_workload=resolve_reference, check_cell=problem)

    def option_names(self) -> set[str]:
        return {k for m in self.methods.values() for k in getattr(m, "options", {})}


# ---- parsing ------------------------------------------------------------------------------

def load_suite(path: str | Path, catalog: Catalog | None = None,
               overrides: dict[str, Any] | None = None) -> Suite:
    """Read and validate a suite file; ``overrides`` (``--set KEY=VALUE``) replace a key in
    [defaults] and in every [[sweep]], and go through the same validation."""
    path = Path(path)
    text = read_suite_text(path, SuiteError)
    return parse_suite(text, source=str(path), default_name=path.stem, catalog=catalog, overrides=overrides)


def parse_suite(
    text: str,
    source: str = "<suite>",
    default_name: str = "suite",
    catalog: Catalog | None = None,
    overrides: dict[str, Any] | None = None,
) -> Suite:
    text = text.removeprefix("\ufeff")  # a byte-order mark: see suite.text
    try:
        doc = toml_loads(text)
    except tomllib.TOMLDecodeError as e:
        # tomllib's message already says "(at line L, column C)".
        raise SuiteError(f"{source}: malformed TOML: {e}") from None
    except TooDeep:
        raise SuiteError(f"{source}: arrays or tables nested more than {MAX_NESTING} deep; "
                         f"not a suite") from None
    for key, value in (overrides or {}).items():
        if isinstance(doc.get("defaults", {}), dict):
            doc.setdefault("defaults", {})[key] = value
        for sweep in doc.get("sweep", []) if isinstance(doc.get("sweep"), list) else []:
            if isinstance(sweep, dict):
                sweep[key] = value
    return _Parser(source, catalog or Catalog.default()).parse(doc, default_name)


def parse_override(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` from the command line; VALUE is read as a TOML value (``4``, ``true``,
    ``[8, 16]``, ``"x"``), and as a plain string when it is not one (``mode=estimate``).
    One value only: a line break or a second assignment in VALUE is refused, not dropped."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SuiteError(f"--set {text!r}: expected KEY=VALUE, e.g. --set mode=estimate")
    if any(ch in raw for ch in "\n\r\x00") or any(ch in key for ch in "\n\r\x00"):
        raise SuiteError(f"--set {text!r}: a line break in KEY=VALUE; give each key its own --set")
    try:
        doc = toml_loads(f"v = {raw}")
        value = doc["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    except TooDeep:
        raise SuiteError(f"--set {key}: value nested more than {MAX_NESTING} deep") from None
    return key, value


class _Parser:
    def __init__(self, source: str, catalog: Catalog):
        self.source = source
        self.catalog = catalog
        self.option_names = catalog.option_names()
        # Relative config paths resolve against the suite file's folder (the cwd for inline text).
        self.base_dir = Path(source).parent if Path(source).is_file() else Path.cwd()

    def fail(self, where: str, key: str, problem: str) -> SuiteError:
        from ..terminal import shown_name

        parts = [self.source] + [p for p in (where, key and shown_name(key)) if p] + [problem]
        error = SuiteError(": ".join(parts))
        error.key, error.problem = key, problem  # for callers that name the key their own way (estimate --from)
        return error

    # -- document level
    def parse(self, doc: dict[str, Any], default_name: str) -> Suite:
        for key in doc:
            if key not in TOP_LEVEL_KEYS:
                raise self.fail("", key, f"unknown top-level key{hint(key, TOP_LEVEL_KEYS)}; "
                                f"a suite has [suite], [defaults] and [[sweep]] tables")
        meta = doc.get("suite", {})
        if not isinstance(meta, dict):
            raise self.fail("", "suite", "expected a [suite] table")
        for key in meta:
            if key not in SUITE_KEYS:
                raise self.fail("[suite]", key, f"unknown key{hint(key, SUITE_KEYS)}")
        name = meta.get("name", default_name)
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise self.fail("[suite]", "name", f"{name!r} must be a plain name (letters, digits, _ . + -)")
        description = meta.get("description", "")
        if not isinstance(description, str):
            raise self.fail("[suite]", "description", f"expected a string, got {description!r}")

        defaults = doc.get("defaults", {})
        if not isinstance(defaults, dict):
            raise self.fail("", "defaults", "expected a [defaults] table")
        self.check_keys("[defaults]", defaults, allow_sweep_only=False)

        sweeps = doc.get("sweep")
        if sweeps is None:
            raise self.fail("", "sweep", "no [[sweep]] table: a suite needs at least one")
        if not isinstance(sweeps, list) or not all(isinstance(s, dict) for s in sweeps):
            raise self.fail("", "sweep", "expected [[sweep]] tables (an array of tables)")
        if not sweeps:
            raise self.fail("", "sweep", "empty: a suite needs at least one [[sweep]] table")

        cells: dict[str, Cell] = {}
        for i, sweep in enumerate(sweeps, start=1):
            where = f"[[sweep]] #{i}"
            self.check_keys(where, sweep, allow_sweep_only=True)
            for cell in self.expand(where, {**defaults, **sweep}, own_keys=set(sweep)):
                cells.setdefault(cell.id, cell)
        return Suite(name=name, description=description, path=self.source, cells=tuple(cells.values()))

    def check_keys(self, where: str, table: dict[str, Any], allow_sweep_only: bool) -> None:
        known = set(CELL_KEYS) | self.option_names | (set(SWEEP_ONLY_KEYS) if allow_sweep_only else set())
        for key in table:
            if key in SWEEP_ONLY_KEYS and not allow_sweep_only:
                raise self.fail(where, key, "only allowed in a [[sweep]] table")
            if key not in known:
                raise self.fail(where, key, f"unknown key{key_hint(key, known)}")

    # -- one sweep
    def expand(self, where: str, table: dict[str, Any], own_keys: set[str]) -> list[Cell]:
        table = dict(table)
        zips = table.pop("zip", [])
        excludes = table.pop("exclude", [])
        for key in ("workload", "method"):
            if key not in table:
                raise self.fail(where, key, "missing (set it in [defaults] or in the sweep)")

        axes: dict[str, list[Any]] = {}
        for key, value in table.items():
            values = self.axis_values(where, key, value)
            if not values:
                raise self.fail(where, key, "empty list: an axis needs at least one value")
            axes[key] = [self.check_value(where, key, v) for v in values]

        sweep_methods = [self.catalog.methods[m] for m in axes["method"]]
        sweep_options = {k for m in sweep_methods for k in getattr(m, "options", {})}
        for key in own_keys & set(axes):  # [defaults] keys may serve other sweeps' methods
            if key not in CELL_KEYS and key not in sweep_options:
                names = ", ".join(m.name for m in sweep_methods)
                raise self.fail(where, key, f"not an option of any method of this sweep ({names})"
                                f"{hint(key, sweep_options)}")

        try:
            groups = zip_groups(zips, axes)
        except BadValue as e:
            raise self.fail(where, "zip", str(e)) from None
        exclude_rules = self.exclude_rules(where, excludes)
        for rule in exclude_rules:
            for key in rule:
                if key not in axes:
                    raise self.fail(where, f"exclude.{key}", f"not a key of this sweep, so it never matches"
                                    f"{hint(key, axes)}")

        cells: list[Cell] = []
        combos = 0
        for combo in combinations(axes, groups):
            combos += 1
            if any(all(combo.get(k) in allowed for k, allowed in rule.items()) for rule in exclude_rules):
                continue
            cells.append(self.make_cell(where, combo))
        if combos and not cells:
            raise self.fail(where, "exclude", "drops every combination of this sweep")
        return cells

    def check_value(self, where: str, key: str, value: Any) -> Any:
        if key in CELL_KEYS:
            try:
                value = CELL_KEYS[key](value)
            except BadValue as e:
                raise self.fail(where, key, str(e)) from None
            if key == "method" and value not in self.catalog.methods:
                raise self.fail(where, key, f"unknown method {value!r}{hint(value, self.catalog.methods)}; "
                                f"known: {', '.join(sorted(self.catalog.methods))}")
            if key == "workload" and value not in self.catalog.workloads and self.catalog.resolve_workload:
                from ..model.workloads import WorkloadError

                try:
                    return self.catalog.resolve_workload(value, self.base_dir)
                except WorkloadError as e:
                    raise self.fail(where, key, str(e)) from None
            if key == "workload" and value not in self.catalog.workloads:
                raise self.fail(where, key, f"unknown workload {value!r}{hint(value, self.catalog.workloads)}; "
                                f"known: {', '.join(sorted(self.catalog.workloads))}, or a config.json path")
        return value  # method options are checked per cell, by their method

    def axis_values(self, where: str, key: str, value: Any) -> list[Any]:
        """The values a key takes: a list is an axis, except for targets (``targets_settings``)."""
        if key.rsplit(".", 1)[-1] != "targets":
            return value if isinstance(value, list) else [value]
        try:
            return targets_settings(value)
        except AmbiguousTargets as e:
            raise self.fail(where, key, str(e)) from None

    def exclude_rules(self, where: str, excludes: Any) -> list[dict[str, list[Any]]]:
        if not isinstance(excludes, list) or not all(isinstance(e, dict) and e for e in excludes):
            raise self.fail(where, "exclude", 'expected a list of tables, e.g. exclude = [{method = "full", r = 16}]')
        rules = []
        known = set(CELL_KEYS) | self.option_names
        for rule in excludes:
            parsed = {}
            for key, value in rule.items():
                if key not in known:
                    raise self.fail(where, f"exclude.{key}", f"unknown key{key_hint(key, known)}")
                values = self.axis_values(where, f"exclude.{key}", value)
                if not values:
                    raise self.fail(where, f"exclude.{key}", "empty list: matches nothing")
                parsed[key] = [self.check_exclude_value(where, key, v) for v in values]
            rules.append(parsed)
        return rules

    def check_exclude_value(self, where: str, key: str, value: Any) -> Any:
        """An exclude value is checked like the key's own values: a typo (``method = "ful"``,
        ``r = "8"``) would otherwise match nothing and keep every cell, silently."""
        if key in CELL_KEYS:
            try:
                return self.check_value(where, key, value)
            except SuiteError as e:
                raise SuiteError(str(e).replace(f": {key}: ", f": exclude.{key}: ", 1)) from None
        from ..methods.base import MethodError

        problems = []
        for method in self.catalog.methods.values():
            if key in getattr(method, "options", {}):
                try:
                    return method.resolve_options({key: value})[key]
                except MethodError as e:
                    problems.append(str(e))
        raise self.fail(where, f"exclude.{key}", problems[0] if problems else "not an option of any method")

    # -- one combination
    def make_cell(self, where: str, combo: dict[str, Any]) -> Cell:
        method = self.catalog.methods[combo["method"]]
        method_options = getattr(method, "options", {})
        fields = {k: v for k, v in combo.items() if k in CELL_KEYS}
        given = {k: v for k, v in combo.items() if k not in CELL_KEYS and k in method_options}
        # Keys of the other methods of this sweep are ignored here (checked in expand).
        if getattr(method, "rankless", False):
            fields["r"], fields["alpha"] = Cell.r, Cell.alpha
        self.check_shape(where, fields)
        from ..methods.base import MethodError

        for key, value in given.items():  # one key at a time, so the error names it
            try:
                method.resolve_options({key: value})
            except MethodError as e:
                raise self.fail(where, key, str(e)) from None
        try:
            options = method.resolve_options(given)
        except MethodError as e:
            raise self.fail(where, "method", str(e)) from None
        self.check_files(where, method_options, options)
        cell = Cell(**fields, options=tuple(sorted(options.items())))
        found = cell.problem()  # the cell rules the runner applies too (Cell.validate)
        if found is None and self.catalog.check_cell is not None:  # what the model's config rules out
            found = self.catalog.check_cell(cell, method)
        if found:
            raise self.fail(where, *found)
        return cell

    def check_files(self, where: str, method_options: Mapping[str, Any], options: dict[str, Any]) -> None:
        """A file a cell will read (``Option(path=True)``) must be a regular file of bounded
        size now: ``/dev/zero`` or a FIFO is refused before anything runs."""
        from ..safe_files import UnsafeFileError, check_small_file

        for key, opt in method_options.items():
            if getattr(opt, "path", False) and options.get(key) is not None:
                try:
                    check_small_file(options[key], "file")
                except UnsafeFileError as e:
                    raise self.fail(where, key, str(e)) from None

    def check_shape(self, where: str, fields: dict[str, Any]) -> None:
        linear = fields["workload"] == LINEAR_WORKLOAD
        if linear:
            # Filled in so that a cell written with and without the defaults has one id.
            fields.setdefault("d_in", self.catalog.linear_default_dim)
            fields.setdefault("d_out", fields["d_in"])
            if fields.get("layers", 1) > 1 and fields["d_in"] != fields["d_out"]:
                raise self.fail(where, "layers", f"a stack of {fields['layers']} linear layers needs "
                                f"d_in == d_out (got {fields['d_in']} and {fields['d_out']})")
            r = fields.get("r", Cell.r)
            d = min(fields["d_in"], fields["d_out"])
            if r > d and not getattr(self.catalog.methods[fields["method"]], "rankless", False):
                raise self.fail(where, "r", f"r = {r} exceeds min(d_in, d_out) = {d} of the linear workload")
        else:
            for key in ("d_in", "d_out"):
                if key in fields:
                    raise self.fail(where, key, f"only applies to the linear workload, not {fields['workload']!r}")
