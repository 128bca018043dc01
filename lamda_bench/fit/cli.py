"""``lamda-bench fit``: its flags, and the run they drive (``fit.plan`` probes cells, ``fit.output``
prints and writes the answer). The budget and the answer are per card; every answer is an
estimate. ``cli.py`` registers the verb and turns the result into an exit code.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .plan import FitError


def add_fit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workload", default=None, help="e.g. llama2-7b (lamda-bench list workloads)")
    parser.add_argument("--method", default=None, nargs="+", help="one or more methods, e.g. lora lamda")
    parser.add_argument("--from", dest="config", type=Path, default=None, metavar="FILE",
                        help="a trainer config (axolotl / LLaMA-Factory YAML, TrainingArguments JSON): its cell "
                             "keys, with every key's fate printed; the flags given beside it win")
    parser.add_argument("--format", default=None, help="the --from file's format (default: detected)")
    parser.add_argument("--adapter", type=Path, default=None, metavar="ADAPTER_CONFIG",
                        help="a PEFT adapter_config.json")
    parser.add_argument("--budget", required=True,
                        help="device memory: a size (24GiB, 24GB = 24e9 bytes, 81559MiB) or a card (H100-80GB, ...)")
    axis = parser.add_mutually_exclusive_group()
    axis.add_argument("--seq", type=int, help="fixed sequence length: find the largest batch (default with --from: "
                                              "the config's sequence length)")
    axis.add_argument("--batch", type=int, help="fixed batch: find the largest sequence length")
    parser.add_argument("--r", type=int, default=None, help="rank (default: the cell default, 8)")
    parser.add_argument("--targets", default=None, help="target preset or module suffix (default all)")
    parser.add_argument("--multiple", type=int, default=None,
                        help="search in multiples of K (default 1 for batch, 128 for seq)")
    parser.add_argument("--limit", type=int, default=None,
                        help="largest value searched (default 4096 for batch; for seq the model's max positions)")
    parser.add_argument("--reserve", default="0", help="extra memory held back from the budget, e.g. 2GiB (default 0)")
    parser.add_argument("--world-size", type=int, default=1,
                        help="ranks of a data-parallel job (default 1); the budget and the answer are per card")
    parser.add_argument("--parallel", default="none", choices=("none", "ddp", "fsdp2"),
                        help="how the ranks split the model: fsdp2 (fully_shard per block) or ddp (replicas)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="any other cell key, e.g. --set gradient_checkpointing=true (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("reports") / "fit",
                        help="probe records, fit.json and fit.png (default reports/fit; recorded probes are reused)")
    parser.add_argument("--jobs", type=int, default=2, help="probe cells estimated at once (default 2)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--trace", choices=["auto", "full"], default="auto",
                        help="auto: certified depth extrapolation where it applies; full: trace every block "
                             "(docs/extrapolation.md)")


FIT_RESERVED_KEYS = ("batch", "seq", "mode", "method", "workload", "world_size", "parallel")


def run_fit(args: argparse.Namespace) -> bool:
    """Plan, print and write the fit; True when some probe cell ended in error."""
    from .budgets import parse_budget, parse_size
    from .plan import DEFAULT_MULTIPLE, Layout, plan, probe_runner
    from .output import table, write_json, write_plot
    from ..suite.parse import parse_override, parse_suite

    if args.jobs < 1:
        raise FitError(f"--jobs: {args.jobs} is less than 1")
    for flag, value in (("--multiple", args.multiple), ("--limit", args.limit)):
        if value is not None and value < 1:
            raise FitError(f"{flag} {value}: expected an integer >= 1")
    budget = parse_budget(args.budget, reserve=parse_size(args.reserve, "--reserve"))
    translation, given = _from_config(args)
    axis, fixed = ("batch", "seq") if args.seq is not None or args.batch is None else ("seq", "batch")
    multiple = args.multiple if args.multiple is not None else DEFAULT_MULTIPLE[axis]
    overrides = dict(parse_override(o) for o in args.overrides)
    for key in FIT_RESERVED_KEYS:
        if key in overrides:
            raise FitError(f"--set {key}: fit sets {key} itself (use --workload, --method, --seq or --batch, "
                           "--world-size, --parallel)")
    layout = Layout(args.world_size, args.parallel)
    layout.check(args.method)
    overrides = {**{k: list(v) if isinstance(v, tuple) else v for k, v in given.items() if k not in FIT_RESERVED_KEYS},
                 **overrides}
    if getattr(args, "trace", "auto") != "auto":
        overrides["trace"] = args.trace
    overrides.update(workload=args.workload, method=list(args.method), mode="estimate",
                     **{fixed: getattr(args, fixed), axis: multiple}, **layout.probe_keys())
    if args.r is not None:
        overrides["r"] = args.r
    if args.targets is not None:
        overrides["targets"] = args.targets
    check_out(args.out)
    suite = parse_suite("[[sweep]]\n", source="lamda-bench fit", default_name="fit", overrides=overrides)
    rows = plan(list(suite.cells), axis, budget, probe_runner(args.out, args.jobs, not args.no_progress),
                multiple=args.multiple, limit=args.limit, layout=layout)
    if translation is not None and translation.headline():
        print(translation.headline())
    print(table(rows, budget))
    written = [write_json(rows, budget, args.out), write_plot(rows, budget, args.out)]
    print("written: " + ", ".join(str(p) for p in written if p is not None)
          + f"; probe records in {args.out / 'results.jsonl'}")
    if translation is not None:
        print("\n".join(translation.lines()))
    return any(r["verdict"] == "error" for r in rows)


def _from_config(args: argparse.Namespace):
    """(translation or None, its cell keys): fills --workload, --method and the fixed axis from
    ``--from``/``--adapter`` where the flags leave them out; one line when nothing gives them."""
    from ..trainer_config import load

    translation, keys = None, {}
    if args.config is not None or args.adapter is not None:
        translation = load(args.config, args.format, args.adapter)
        keys = dict(translation.cell)
        if args.seq is None and args.batch is None:
            args.seq = keys.get("seq")
    for name in ("workload", "method"):
        if getattr(args, name) is None:
            value = keys.get(name)
            if value is None:
                raise FitError(f"--{name} is required (or --from a trainer config that names it)")
            setattr(args, name, value if name == "workload" else [value])
    if args.seq is None and args.batch is None:
        raise FitError("give --seq (find the largest batch) or --batch (find the largest seq)")
    return translation, keys


def check_out(out: Path) -> None:
    """``--out`` and the two files fit writes there at the end, checked before any probe runs."""
    from ..paths import writable_dir, writable_file

    writable_dir(out, "--out")
    for name in ("fit.json", "fit.png"):
        writable_file(out / name, "--out")
