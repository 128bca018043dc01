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
    parser.add_argument("--card", default=None, metavar="NAME",
                        help="with a size --budget: the card whose allocator, workspaces and context to assume "
                             "(a card --budget implies its own)")
    parser.add_argument("--allocator", default="default", metavar="SETTINGS",
                        help="with a card: the caching allocator's settings, 'default', 'expandable' or a "
                             "PYTORCH_CUDA_ALLOC_CONF string (docs/card-memory.md)")
    parser.add_argument("--reserve", default="0", help="extra memory held back from the budget, e.g. 2GiB (default 0)")
    parser.add_argument("--world-size", type=int, default=1,
                        help="ranks of a data-parallel job (default 1); the budget and the answer are per card")
    parser.add_argument("--parallel", default="none", choices=("none", "ddp", "fsdp2"),
                        help="how the ranks split the model: fsdp2 (fully_shard per block) or ddp (replicas)")
    parser.add_argument("--optimizer", default=None, metavar="NAME",
                        help="an HF Trainer optimizer name, e.g. adamw_bnb_8bit, paged_adamw_8bit, adafactor "
                             "(default: the cell default adamw; docs/optimizers.md)")
    parser.add_argument("--paged-evictable", action="store_true",
                        help="leave paged optimizer state (paged_*: CUDA unified memory, evictable to host RAM) "
                             "out of each peak; counted by default")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="any other cell key, e.g. --set gradient_checkpointing=true (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("reports") / "fit",
                        help="probe records, fit.json and fit.png (default reports/fit; recorded probes are reused)")
    parser.add_argument("--jobs", type=int, default=2, help="probe cells estimated at once (default 2)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--advise", action="store_true",
                        help="for a method that does not fit: search the levers that would make it fit, cheapest "
                             "first (docs/fit-advise.md)")
    parser.add_argument("--levers", default=None, metavar="A,B",
                        help="the levers --advise may pull (implies --advise; default all: gradient_checkpointing, "
                             "expandable_segments (with a card), "
                             "autocast_adapter_dtype, quant, optimizer, r, targets, seq, world_size)")
    parser.add_argument("--advise-top", type=int, default=None, metavar="N",
                        help="stop the lever search once N combinations fit (default 3)")
    parser.add_argument("--advise-max-estimates", type=int, default=None, metavar="N",
                        help="most lever-search estimates per method (default 48)")
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
    budget = _budget(args, parse_budget, parse_size)
    translation, given = _from_config(args)
    axis, fixed = ("batch", "seq") if args.seq is not None or args.batch is None else ("seq", "batch")
    multiple = args.multiple if args.multiple is not None else DEFAULT_MULTIPLE[axis]
    overrides = dict(parse_override(o) for o in args.overrides)
    for key in FIT_RESERVED_KEYS:
        if key in overrides:
            raise FitError(f"--set {key}: fit sets {key} itself (use --workload, --method, --seq or --batch, "
                           "--world-size, --parallel)")
    layout = Layout(args.world_size, args.parallel, paged_evictable=args.paged_evictable,
                    on_card=budget.on_card is not None)
    layout.check(args.method)
    overrides = {**{k: list(v) if isinstance(v, tuple) else v for k, v in given.items() if k not in FIT_RESERVED_KEYS},
                 **overrides}
    if getattr(args, "trace", "auto") != "auto":
        overrides["trace"] = args.trace
    overrides.update(workload=args.workload, method=list(args.method), mode="estimate",
                     **{fixed: getattr(args, fixed), axis: multiple}, **layout.probe_keys())
    if budget.on_card is not None:  # the probes replay the allocator on the card (cell keys card, allocator)
        overrides.update(card=budget.on_card, allocator=budget.allocator)
    if args.r is not None:
        overrides["r"] = args.r
    if args.targets is not None:
        overrides["targets"] = args.targets
    if args.optimizer is not None:
        overrides["optimizer"] = args.optimizer
    levers = _levers(args, axis)
    _check_paged_evictable(args, overrides, levers)
    check_out(args.out)
    suite = parse_suite("[[sweep]]\n", source="lamda-bench fit", default_name="fit", overrides=overrides)
    runner = probe_runner(args.out, args.jobs, not args.no_progress)
    rows = plan(list(suite.cells), axis, budget, runner, multiple=args.multiple, limit=args.limit, layout=layout)
    if translation is not None and translation.headline():
        print(translation.headline())
    print(table(rows, budget))
    if _paged(overrides.get("optimizer")):
        print("Paged optimizer state (memory.optimizer_paged, CUDA unified memory that the driver can evict to host "
              "RAM) is " + ("left out of each peak (--paged-evictable)." if args.paged_evictable else
                            "counted in each peak; --paged-evictable leaves it out."))
    if any(c.offload_activations for c in suite.cells):
        print("Offloaded activations (offload_activations, docs/offload.md) are host RAM, outside each peak above: "
              "each probe record holds them (memory.host_offloaded_peak) and the host-link bytes a step "
              "(info.offload_activations).")
    advised = _advise(args, rows, list(suite.cells), levers, budget, layout, runner, axis, multiple)
    written = [write_json(rows, budget, args.out), write_plot(rows, budget, args.out), *advised]
    print("written: " + ", ".join(str(p) for p in written if p is not None)
          + f"; probe records in {args.out / 'results.jsonl'}")
    if translation is not None:
        print("\n".join(translation.lines()))
    return any(r["verdict"] == "error" for r in rows)


def _budget(args: argparse.Namespace, parse_budget, parse_size):
    """The budget: a card on its own terms, a size as allocatable memory, or a size with ``--card``'s
    terms; ``--allocator`` only where a card's allocator is modelled. Bad flags are one line."""
    from ..card.allocator import parse_settings
    from ..card.cards import get_card

    card = get_card(args.card, "--card").name if args.card is not None else None
    parse_settings(args.allocator)
    for key in ("card", "allocator"):
        if any(str(o).split("=", 1)[0].strip() == key for o in args.overrides):
            raise FitError(f"--set {key}: use fit's --card / --allocator (or a card as --budget)")
    budget = parse_budget(args.budget, reserve=parse_size(args.reserve, "--reserve"), card_terms=card,
                          allocator=args.allocator)
    if budget.card is not None and card is not None and card != budget.card:
        raise FitError(f"--card {card} beside --budget {args.budget}: a card budget is taken on its own terms; "
                       "give one card")
    if budget.on_card is None and args.allocator != "default":
        raise FitError(f"--allocator {args.allocator!r} needs a card (--budget CARD, or --card NAME beside a size): "
                       "the allocator is modelled on a card only")
    return budget


def _paged(name) -> bool:
    from ..optimizers.catalogue import CATALOGUE

    return isinstance(name, str) and name in CATALOGUE and CATALOGUE[name].paged


def _check_paged_evictable(args: argparse.Namespace, overrides: dict, levers) -> None:
    """--paged-evictable changes only a paged optimizer's figures: refused, not ignored in silence,
    when neither the optimizer nor an --advise optimizer lever is paged."""
    from ..optimizers.catalogue import CATALOGUE

    if not args.paged_evictable:
        return
    name = overrides.get("optimizer", "adamw")
    names = name if isinstance(name, list) else [name]
    if any(getattr(CATALOGUE.get(n) if isinstance(n, str) else None, "paged", False) for n in names):
        return
    if levers is not None and "optimizer" in [getattr(lever, "name", lever) for lever in levers]:
        return  # the optimizer lever tries paged_adamw_8bit
    paged = ", ".join(n for n, e in CATALOGUE.items() if e.paged)
    raise FitError(f"--paged-evictable: optimizer {names[0]!r} keeps no paged state, so the flag would change "
                   f"nothing; it applies to a paged optimizer ({paged}) or to --advise with the optimizer lever")


def _levers(args: argparse.Namespace, axis: str):
    """The levers --advise may pull (None without --advise); bad flags are one line."""
    from .levers import parse_levers

    for flag, value in (("--advise-top", args.advise_top), ("--advise-max-estimates", args.advise_max_estimates)):
        if value is not None and value < 1:
            raise FitError(f"{flag} {value}: expected an integer >= 1")
    if args.levers is not None:
        args.advise = True
    return parse_levers(args.levers, axis) if args.advise else None


def _advise(args, rows, cells, levers, budget, layout, runner, axis, multiple) -> list:
    """--advise: each row that does not fit gets an ``advice`` block (printed; the plot's path
    returned). Without it, one pointer line per such row."""
    from .advise import DEFAULT_MAX_ESTIMATES, DEFAULT_TOP, Counter, advise
    from .advise_output import advice_text, pointer, write_advice_plot
    from ..results.files import latest_by_id, load_results, results_path

    stuck = [(row, cell) for row, cell in zip(rows, cells) if row["verdict"] == "does not fit"]
    if levers is None:
        for row, _ in stuck:
            print(pointer(row))
        return []
    known = set(latest_by_id(load_results(results_path(args.out)).records))
    counter = Counter(runner, known)
    for row, cell in stuck:
        row["advice"] = advise(row, cell, levers, budget, layout, counter, axis, multiple, args.limit,
                               top=args.advise_top or DEFAULT_TOP,
                               max_estimates=args.advise_max_estimates or DEFAULT_MAX_ESTIMATES)
        for f in row["advice"]["fitting"]:
            f["command"] = _command(args, row, f["flags"])
        print(advice_text(row, budget))
    if not stuck:
        print("advice: every method fits as asked; no lever searched.")
    return [write_advice_plot(rows, budget, args.out)]


def _command(args: argparse.Namespace, row: dict, flags: list[str]) -> str:
    """The ``fit`` command line that asks for a suggestion (the flags as given, the change's on top)."""
    import shlex

    fixed = "seq" if row["axis"] == "batch" else "batch"
    opts = {"--workload": args.workload, "--method": row["method"], "--budget": args.budget,
            f"--{fixed}": getattr(args, fixed), "--r": args.r, "--targets": args.targets,
            "--multiple": args.multiple, "--limit": args.limit,
            "--reserve": args.reserve if str(args.reserve) != "0" else None,
            "--optimizer": args.optimizer, "--trace": args.trace if args.trace != "auto" else None,
            "--card": args.card, "--allocator": args.allocator if args.allocator != "default" else None}
    if args.world_size > 1:
        opts.update({"--world-size": args.world_size, "--parallel": args.parallel})
    sets = list(args.overrides)
    for flag, value in zip(flags[::2], flags[1::2]):
        if flag == "--set":
            sets.append(value)
        else:
            opts[flag] = value
    words = ["lamda-bench", "fit"] + [w for k, v in opts.items() if v is not None for w in (k, str(v))]
    words += ["--paged-evictable"] if args.paged_evictable else []
    return shlex.join(words + [w for v in sets for w in ("--set", v)])


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
    for name in ("fit.json", "fit.png", "fit-advise.png"):
        writable_file(out / name, "--out")
