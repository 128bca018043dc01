"""``lamda-bench estimate``: one cell from flags (one per cell key) and/or a trainer config
(``--from``, ``--adapter``); flags beside ``--from`` override it. Prints the readable answer
(``output``), or the record with ``--json``; appends to ``--out`` and reuses a recorded cell."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .cell import EstimateError

# Cell keys with their own flag (``--gradient-checkpointing``); method options go through --set.
BOOL_KEYS = ("gradient_checkpointing", "reshard_after_forward", "offload_activations", "precompute_ref_log_probs")


def flag_keys() -> list[str]:
    from ..suite.values import CELL_KEYS

    return [k for k in CELL_KEYS]


def add_estimate_arguments(parser: argparse.ArgumentParser) -> None:
    from ..trainer_config import FORMATS

    parser.add_argument("--from", dest="config", type=Path, default=None, metavar="FILE",
                        help="a trainer config: axolotl YAML, LLaMA-Factory YAML, HF TrainingArguments / TRL "
                             "SFTConfig JSON (format detected; --format forces one)")
    parser.add_argument("--format", default=None, choices=FORMATS, help="the --from file's format")
    parser.add_argument("--adapter", type=Path, default=None, metavar="ADAPTER_CONFIG",
                        help="a PEFT adapter_config.json (LoraConfig as saved)")
    for key in flag_keys():
        flag = "--" + key.replace("_", "-")
        if key in BOOL_KEYS:
            parser.add_argument(flag, dest=f"cell_{key}", nargs="?", const="true", default=None, metavar="BOOL",
                                help=f"cell key {key} (true when given alone)")
        else:
            parser.add_argument(flag, dest=f"cell_{key}", default=None, metavar="VALUE", help=f"cell key {key}")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="any other cell key or method option, e.g. --set dropout=0.05 (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the record (JSON) instead of the breakdown")
    parser.add_argument("--out", type=Path, default=Path("reports") / "estimate",
                        help="results directory the record is appended to (default reports/estimate; a cell "
                             "already recorded there is not run again)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def gather_keys(args: argparse.Namespace, origins: dict[str, str] | None = None) -> tuple[dict[str, Any], Any]:
    """(cell keys, the trainer-config translation or None): config first, then flags, then --set.
    ``origins`` (when given) receives, per cell key, what set it: ``--flag``, ``--set`` or the file's key."""
    from ..suite.parse import parse_override
    from ..trainer_config import load

    translation = None
    keys: dict[str, Any] = {}
    if args.config is not None or args.adapter is not None:
        translation = load(args.config, args.format, args.adapter, workload_given=args.cell_workload is not None)
        keys.update(translation.cell)
        for fate in translation.fates:
            for key, _ in fate.cell:
                _origin(origins, key, f"{translation.source}: {fate.key}")
    elif args.format is not None:
        raise EstimateError("--format applies to a --from file")
    for key in flag_keys():
        raw = getattr(args, f"cell_{key}")
        if raw is None:
            continue
        if key == "targets" and "," in raw and not raw.lstrip().startswith("["):
            keys[key] = [t.strip() for t in raw.split(",") if t.strip()]
        elif key == "workload" or key == "method":
            keys[key] = raw
        else:
            keys[key] = parse_override(f"{key}={raw}")[1]
        _origin(origins, key, "--" + key.replace("_", "-"))
    from ..terminal import shown_name

    for override in args.overrides:
        key, value = parse_override(override)
        keys[key] = value
        _origin(origins, key, f"--set {shown_name(key)}")
    if translation is not None and isinstance(keys.get("workload"), str):
        from ..model.workloads import get_workload
        from ..trainer_config.peft_adapter import check_peft_rewrite

        check_peft_rewrite(translation, get_workload(keys["workload"]).family)
    if translation is not None and "seq" not in keys:
        raise EstimateError(f"{translation.source} gives no sequence length ({translation.format}); give --seq")
    return keys, translation


def _origin(origins: dict[str, str] | None, key: str, where: str) -> None:
    if origins is not None:
        origins[key] = where


def build_from(keys: dict[str, Any], origins: dict[str, str]):
    """``build_cell``, its refusal worded in the terms of what set the key (the file's own key,
    ``lora_r``, and the file; or the flag), not the suite's ``[[sweep]] #1``."""
    from .cell import build_cell
    from ..suite.parse import SuiteError

    try:
        return build_cell(keys)
    except SuiteError as e:
        key = getattr(e, "key", None)
        if key not in origins:
            raise
        from ..terminal import shown_name

        raise EstimateError(f"{origins[key]}: {e.problem} (cell key {shown_name(key)})") from None


def run_estimate(args: argparse.Namespace) -> int:
    """Print the answer; 0 when the cell is ok, 1 when it ended in error or timeout."""
    from .cell import run_one
    from .output import describe
    from ..results.files import results_path
    from ..terminal import printable, printable_lines

    origins: dict[str, str] = {}
    keys, translation = gather_keys(args, origins)
    headline = translation.headline() if translation is not None else None
    cell = build_from(keys, origins)
    record, reused = run_one(cell, args.out, progress=not args.no_progress and not args.json)
    if translation is not None:
        write_fates(translation, args.out, cell.id)
    if args.json:
        if headline:
            print(printable(headline), file=sys.stderr)
        print(json.dumps(record, indent=1))
    else:
        lines = ([headline] if headline else []) + [describe(record, reused, str(results_path(args.out)))]
        if translation is not None:
            lines += [""] + translation.lines()
        print(printable_lines("\n".join(lines)))
    return 0 if record.get("status") == "ok" else 1


def write_fates(translation, out: Path, cell_id: str) -> Path:
    """``OUT/trainer-configs/<cell id>.json``: the config's keys and their fates beside the record
    (the runner's record knows the cell, not the file it came from)."""
    path = out / "trainer-configs" / f"{cell_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"id": cell_id, "note": translation.headline(), **translation.to_dict()}, indent=1),
                    encoding="utf-8")
    return path
