"""A trainer config file (JSON or YAML) as a mapping, in bounded time and memory.

A config is a few KiB written by a person; a hostile or broken one must end in one line, never
a hang or a traceback. The bounds, each checked before the next step can blow up:

- size: at most ``MAX_BYTES`` (``safe_files.read_small_file``: regular files only);
- nesting: at most ``MAX_DEPTH`` levels, counted on YAML's event stream (PyYAML's parser is a
  loop; its composer and constructor recurse) and after JSON decoding (``RecursionError`` is
  caught as well);
- aliases: YAML anchors are followed on the composed node graph (shared, so cheap) and the
  values they would expand to are counted: more than ``MAX_VALUES`` ("billion laughs"), or an
  alias inside its own anchor, is refused before anything is built from them;
- keys: a key given twice in one mapping is refused (YAML and JSON would keep the last one in
  silence), and every top-level key must be a name (a string).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .fate import TrainerConfigError

MAX_BYTES = 1 << 20  # an axolotl or LLaMA-Factory config is a few KiB
MAX_DEPTH = 32  # real configs nest 3 or 4 levels
MAX_VALUES = 100_000  # scalars, lists and mappings, aliases expanded


class _Refused(Exception):
    """Raised inside the loaders; becomes one TrainerConfigError line naming the file."""


def read_document(path: str | Path) -> dict[str, Any]:
    """The file as a mapping: JSON, else YAML; one-line TrainerConfigError otherwise."""
    from ..safe_files import UnsafeFileError, read_small_file

    path = Path(path)
    try:
        raw = read_small_file(path, "trainer config", MAX_BYTES)
    except UnsafeFileError as e:
        raise TrainerConfigError(str(e)) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise TrainerConfigError(f"{path}: not a text file, so neither YAML nor JSON") from None
    try:
        doc = _json(text)
        if doc is _NOT_JSON:
            doc = _yaml(text)
    except _Refused as e:
        raise TrainerConfigError(f"{path}: {e}") from None
    return _as_mapping(doc, path)


_NOT_JSON = object()


def _json(text: str) -> Any:
    try:
        doc = json.loads(text, object_pairs_hook=_json_object)
    except RecursionError:
        raise _Refused(f"nested more than {MAX_DEPTH} levels deep; no trainer config is") from None
    except ValueError:  # not JSON (or a number too long for int()): YAML may still read it
        return _NOT_JSON
    _check_depth(doc)
    return doc


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Refused(f"key {_shown(key)} is given twice in one object; which one is meant?")
        out[key] = value
    return out


def _check_depth(doc: Any) -> None:
    """Iterative: a JSON document's nesting (json's own recursion limit is deeper than ours)."""
    stack = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (list, dict)):
            if depth > MAX_DEPTH:
                raise _Refused(f"nested more than {MAX_DEPTH} levels deep; no trainer config is")
            stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))


def _yaml(text: str) -> Any:
    import yaml

    try:
        depth = 0
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    raise _Refused(f"nested more than {MAX_DEPTH} levels deep (line {event.start_mark.line + 1}); "
                                   "no trainer config is")
            elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                depth -= 1
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _count(node, {}, set(), 1)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        raise _Refused(f"neither JSON nor YAML{at}: {getattr(e, 'problem', None) or type(e).__name__}") from None
    except (ValueError, OverflowError) as e:  # a date or number PyYAML cannot build (int() digit limit)
        raise _Refused(f"a YAML value that cannot be read: {str(e).split(';')[0][:100]}") from None
    except RecursionError:  # not reached within MAX_DEPTH; kept so no traceback can escape
        raise _Refused(f"nested more than {MAX_DEPTH} levels deep; no trainer config is") from None


def _count(node: Any, sizes: dict[int, tuple[int, int]], open_: set[int], depth: int) -> int:
    """Values ``node`` stands for once its aliases are expanded (memoised per node with its
    height, so a shared anchor is walked once); refuses a cycle, more than MAX_DEPTH levels or
    more than MAX_VALUES values."""
    return _walk(node, sizes, open_, depth)[0]


def _walk(node: Any, sizes: dict[int, tuple[int, int]], open_: set[int], depth: int) -> tuple[int, int]:
    import yaml

    key = id(node)
    if key in sizes:
        total, height = sizes[key]
    elif key in open_:
        raise _Refused(f"an alias refers to its own anchor (line {node.start_mark.line + 1}): "
                       "the value would be infinite")
    elif isinstance(node, yaml.ScalarNode):
        total, height = 1, 0
    else:
        if depth > MAX_DEPTH:
            raise _Refused(f"nested more than {MAX_DEPTH} levels deep once its aliases are expanded; "
                           "no trainer config is")
        open_.add(key)
        children = [v for pair in node.value for v in pair] if isinstance(node, yaml.MappingNode) else node.value
        walked = [_walk(child, sizes, open_, depth + 1) for child in children]
        open_.discard(key)
        total, height = 1 + sum(w[0] for w in walked), 1 + max((w[1] for w in walked), default=0)
        sizes[key] = total, height
    if depth + height - 1 > MAX_DEPTH:
        raise _Refused(f"nested more than {MAX_DEPTH} levels deep once its aliases are expanded; "
                       "no trainer config is")
    if total > MAX_VALUES:
        raise _Refused(f"its aliases expand to more than {MAX_VALUES:,} values (line {node.start_mark.line + 1}); "
                       "no trainer config is that large")
    return total, height


def _loader_class():
    import yaml

    class Loader(yaml.SafeLoader):
        """SafeLoader that refuses a key given twice in one mapping (merge keys ``<<`` excepted)."""

        def construct_mapping(self, node, deep=False):
            seen: set[tuple[str, str]] = set()
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    if (key_node.tag, key_node.value) in seen:
                        raise _Refused(f"key {_shown(key_node.value)} is given twice in one mapping "
                                       f"(line {key_node.start_mark.line + 1}); which one is meant?")
                    seen.add((key_node.tag, key_node.value))
            return super().construct_mapping(node, deep)

    return Loader


def _Loader(text: str):
    return _loader_class()(text)


def _as_mapping(doc: Any, path: Path) -> dict[str, Any]:
    if doc is None:
        raise TrainerConfigError(f"{path}: is empty; a trainer config is a mapping of keys to values")
    if not isinstance(doc, dict):
        raise TrainerConfigError(f"{path}: holds a {_kind(doc)}, not a mapping of keys to values "
                                 "(a trainer config is one)")
    for key in doc:
        if not isinstance(key, str):
            raise TrainerConfigError(f"{path}: key {_shown(key)} is a {_kind(key)}, not a name; a trainer config's "
                                     f"keys are names (quote it if it is meant as one)")
    return doc


def _kind(value: Any) -> str:
    return {dict: "mapping", list: "list", str: "string", int: "number", float: "number", bool: "boolean",
            type(None): "null"}.get(type(value), type(value).__name__)


def _shown(key: Any) -> str:
    from ..terminal import shown_name

    return shown_name(key)
