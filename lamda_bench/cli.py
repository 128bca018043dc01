"""The ``lamda-bench`` command: run, estimate, list, report, compare, check, agreement, verify, fit, app.

Exit codes: 0 done; 1 a run finished but some cells ended in ``error`` or ``timeout``
(their records say why); 2 bad input (one line on stderr, nothing written); 130
interrupted with Ctrl-C (finished cells kept; the next run resumes).

A user error is any ``errors.UserError`` (SuiteError, MethodError, WorkloadError,
ResultsError, ...; each module's own subclass), whose message is one line by convention:
it is printed as ``lamda-bench: error: <message>`` without a traceback. Anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

from .terminal import printable, printable_lines
from .errors import UserError
from .app import add_app_arguments
from .fit.cli import add_fit_arguments
from .one_cell.cli import add_estimate_arguments
from .paths import writable_dir, writable_file

PROG = "lamda-bench"
EXIT_OK, EXIT_FAILED_CELLS, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
REPO_SUITES = Path(__file__).resolve().parent.parent / "suites"


class CliError(UserError):
    """A user error found by the CLI itself (missing file, unavailable launcher)."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_glue_size_values(sys.argv[1:] if argv is None else list(argv)))
    try:
        with _data_warnings_printed():
            return args.func(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, FileNotFoundError) as e:
        if not _is_user_error(e):
            raise
        message = " ".join(str(e).split("\n"))  # one line, whatever the message
        print(f"{PROG}: error: {printable(message)}", file=sys.stderr)
        return EXIT_USAGE


# Data warnings printed during this command (a results line skipped, a value unusable).
_data_warnings: list[str] = []


@contextlib.contextmanager
def _data_warnings_printed():
    """Print each ``results.DataWarning`` as ``lamda-bench: warning: ...`` (one line, control
    characters escaped) as it happens, and count them in ``_data_warnings``."""
    from .results.files import DataWarning

    _data_warnings.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("always", DataWarning)
        previous = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if not issubclass(category, DataWarning):
                return previous(message, category, filename, lineno, file, line)
            _data_warnings.append(str(message))
            print(f"{PROG}: warning: {printable(message)}", file=sys.stderr)

        warnings.showwarning = show
        yield


SIZE_FLAGS = ("--budget", "--reserve")


def _glue_size_values(argv: list[str]) -> list[str]:
    """``--budget -1GiB`` -> ``--budget=-1GiB``: argparse takes a value starting with "-" for an
    option and would say "expected one argument"; glued, the size parser says what is wrong."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in SIZE_FLAGS and i + 1 < len(argv) and argv[i + 1].startswith("-") and argv[i + 1] != "--" \
                and not argv[i + 1].startswith("--"):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def _is_user_error(e: BaseException) -> bool:
    return isinstance(e, (FileNotFoundError, UserError))


def _version() -> str:
    from . import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Memory, FLOP and throughput benchmarks for LaMDA, LoRA, PiSSA and peers.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    run = verbs.add_parser("run", help="run a suite (resumes an earlier run of the same --out)")
    run.add_argument("suite", type=Path, help="suite TOML file, e.g. suites/llama7b.toml")
    run.add_argument("--out", type=Path, help="results directory (default: reports/<suite name>/)")
    run.add_argument("--jobs", type=int, default=1,
                     help="cells run at once (CPU and estimate cells; GPU cells: one per device)")
    run.add_argument("--dry-run", action="store_true", help="print the planned cells and write nothing")
    run.add_argument("--retry-failed", action="store_true",
                     help="re-run cells recorded as error or timeout (ok and oom are kept)")
    run.add_argument("--launcher", choices=["local", "ray"], default="local",
                     help="where cells run (local: a fresh process per cell on this machine, see --start; "
                          "ray: a Ray task per cell, needs pip install 'lamda-bench[ray]')")
    run.add_argument("--address", default=None, metavar="ADDR",
                     help="with --launcher ray: the cluster to join (auto, or HEAD_IP:6379 from a node of it); "
                          "default: a local Ray instance with --jobs CPUs")
    run.add_argument("--start", choices=["auto", "spawn"], default="auto",
                     help="how local cell processes start (auto: forked from a server that imported torch, "
                          "transformers and peft once, except cells that may use CUDA; spawn: a new interpreter each)")
    run.add_argument("--runner", default=None, metavar="MODULE:FUNCTION",
                     help="function run in each cell process (default lamda_bench.runner:run_cell)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--wait", action="store_true",
                     help="if another run holds --out, wait for it to finish (default: exit 2 naming it)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                     help="override a suite key in every sweep, e.g. --set mode=estimate (repeatable; "
                          "the cells' ids change with it)")
    run.add_argument("--trace", choices=["auto", "full"], default="auto",
                     help="estimates: auto extrapolates deep uniform stacks from a few traced depths where "
                          "certified to the byte; full traces every block (docs/extrapolation.md; ids unchanged)")
    run.set_defaults(func=cmd_run)

    est = verbs.add_parser("estimate", help="one cell, no suite file: flags, or --from a trainer config")
    add_estimate_arguments(est)  # one_cell/cli.py: a flag per cell key, --from/--adapter, --json, --out
    est.set_defaults(func=cmd_estimate)

    lst = verbs.add_parser("list", help="methods, workloads and suites")
    lst.add_argument("what", nargs="?", choices=["methods", "workloads", "suites", "optimizers"],
                     help="only this part (optimizers: only when named)")
    lst.set_defaults(func=cmd_list)

    rep = verbs.add_parser("report", help="tables and plots from DIR/results.jsonl into DIR")
    rep.add_argument("dir", type=Path)
    rep.set_defaults(func=cmd_report)

    cmp_ = verbs.add_parser("compare", help="compare two results directories")
    cmp_.add_argument("a", type=Path)
    cmp_.add_argument("b", type=Path)
    cmp_.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                      help="only cells whose KEY (a cell key such as method or r, a method option, or a "
                           "dotted record path) equals VALUE; repeat to require several")
    cmp_.add_argument("--threshold", type=float, default=0.0, metavar="PCT",
                      help="only cells where some metric changed by more than PCT percent")
    cmp_.add_argument("--sort", default=None, choices=("change", "order", "peak", "throughput"),
                      help="row order: largest change first (default), results order, or by B's peak/throughput")
    cmp_.add_argument("--across", default=None, choices=("card",),
                      help="pair cells that differ only in this key (card: the same cells estimated on two cards, "
                           "predicted reserved/device peaks and tokens/s side by side with B / A ratios)")
    cmp_.set_defaults(func=cmd_compare)

    chk = verbs.add_parser("check", help="memory regression gate: non-zero exit on a regression")
    chk.add_argument("dir", type=Path)
    chk.add_argument("--baseline", type=Path, required=True)
    chk.add_argument("--allow-env-drift", action="store_true",
                     help="compare cells whose environment fingerprint differs from the baseline's (named "
                          "field by field) and exit by the comparison instead of 4")
    chk.add_argument("--update-baseline", action="store_true",
                     help="re-record the baseline from this run (refuses on a regression, a failed or missing cell)")
    chk.add_argument("--accept-regressions", action="store_true",
                     help="with --update-baseline: record regressed metrics as the new baseline")
    chk.add_argument("--drop-missing", action="store_true",
                     help="with --update-baseline: leave out cells that failed or have no result")
    chk.set_defaults(func=cmd_check)

    agr = verbs.add_parser("agreement", help="estimate-mode results against CUDA-measured results of the same cells")
    agr.add_argument("measured", type=Path, help="results directory measured on a GPU")
    agr.add_argument("estimated", type=Path, help="results directory of the same suite run with --set mode=estimate")
    agr.add_argument("--tolerance", type=float, default=0.03, help="relative agreement goal (default 0.03)")
    agr.add_argument("--out", type=Path, help="also write the markdown table to this file")
    agr.set_defaults(func=cmd_agreement)

    fit = verbs.add_parser("fit", help="largest batch (or seq) whose estimated step fits a memory budget")
    add_fit_arguments(fit)  # fit/cli.py: the fit command's flags and the run they drive
    fit.set_defaults(func=cmd_fit)

    ver = verbs.add_parser("verify", help="claims ledger: run the claims suite and write claims.md")
    ver.add_argument("--out", type=Path, default=Path("reports") / "claims",
                     help="results directory (default reports/claims; resumes)")
    ver.add_argument("--jobs", type=int, default=2)
    ver.add_argument("--gpu", type=Path, default=None, metavar="DIR",
                     help="GPU-measured results to weigh as well (default reports/gpu/measured when present)")
    ver.add_argument("--no-progress", action="store_true", help="no progress bar")
    ver.set_defaults(func=cmd_verify)

    add_app_arguments(verbs.add_parser("app", help="a local web page: ask, fit, browse (the app extra)"))
    return parser


# ---- run -------------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace) -> int:
    from .launch.local import DEFAULT_RUNNER, LaunchError, run_cells
    from .launch.child import check_runner
    from .results.files import load_results, results_path
    from .suite.parse import load_suite, parse_override

    if args.jobs < 1:
        raise LaunchError(f"--jobs: {args.jobs} is less than 1")
    runner = args.runner or DEFAULT_RUNNER
    suite = load_suite(args.suite, overrides=dict(parse_override(o) for o in args.overrides))
    if getattr(args, "trace", "auto") != "auto":
        import dataclasses

        from .api import with_trace

        suite = dataclasses.replace(suite, cells=type(suite.cells)(with_trace(list(suite.cells), args.trace)))
    out = writable_dir(args.out if args.out is not None else Path("reports") / suite.name, "--out")
    path = results_path(out)

    if args.dry_run:
        loaded = load_results(path).warn(path)  # checks the schema; writes nothing
        from .suite.plan_table import print_plan

        print_plan(suite, {r["id"]: r for r in loaded.records if "id" in r}, out)
        return EXIT_OK

    check_runner(runner)
    if args.launcher == "ray":
        from .launch.ray import run_cells_ray

        summary = run_cells_ray(list(suite.cells), out, suite=suite.name, runner=runner, jobs=args.jobs,
                                retry_failed=args.retry_failed, progress=not args.no_progress,
                                address=args.address)
    else:
        if args.address is not None:
            raise CliError("--address is for --launcher ray")
        summary = run_cells(list(suite.cells), out, suite=suite.name, runner=runner, jobs=args.jobs,
                            retry_failed=args.retry_failed, progress=not args.no_progress, start=args.start,
                            wait_for_lock=args.wait)
    for warning in summary.warnings:
        print(f"{PROG}: warning: {printable(warning)}", file=sys.stderr)
    latest = {}
    for rec in load_results(path).records:
        latest[rec.get("id")] = rec
    records = [latest[c.id] for c in suite.cells if c.id in latest]
    print(summary_table(records))
    print(_run_line(suite, summary, out))
    if summary.interrupted:
        print(f"{PROG}: interrupted; {len(summary.records)} cell(s) recorded this run, "
              f"`{PROG} run {args.suite} --out {out}` resumes", file=sys.stderr)
        return EXIT_INTERRUPTED
    failed = [r for r in records if r.get("status") in ("error", "timeout")]
    for rec in failed:
        print(printable(f"{PROG}: {rec.get('status')}: {rec.get('id')}: {rec.get('error')}"), file=sys.stderr)
    return EXIT_FAILED_CELLS if failed else EXIT_OK


def _run_line(suite, summary, out: Path) -> str:
    counts = ", ".join(f"{n} {s}" for s, n in sorted(summary.statuses.items())) or "nothing new"
    return (f"{suite.name}: {summary.planned} cells, {summary.skipped} already recorded, "
            f"{len(summary.records)} run now ({counts}); results in {out / 'results.jsonl'}")


def summary_table(records: list[dict[str, Any]]) -> str:
    from .report.summary import summary_table as table

    return printable_lines(table(records))


# ---- list ------------------------------------------------------------------------------

def cmd_list(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    parts = [args.what] if args.what else ["methods", "workloads", "suites"]
    if "methods" in parts:
        from .methods import all_methods

        rows = []
        for name, method in all_methods().items():
            opts = "; ".join(
                f"{k}={opt.default!r}" + (f" ({'|'.join(map(str, opt.choices))})" if opt.choices else "")
                for k, opt in method.options.items())
            rows.append([name, method.description, opts])
        print("Methods (method-specific keys with their defaults):")
        print(tabulate(rows, headers=["method", "description", "options"], maxcolwidths=[None, 60, 60]))
        print()
    if "workloads" in parts:
        from .model.catalogue_facts import workload_rows

        print("Workloads (catalogue configs in lamda_bench/model/configs/; a suite may also name a config.json path "
              "or a cached hub id):")
        print(tabulate(workload_rows(), headers=["workload", "params", "shape", "description", "target presets"],
                       maxcolwidths=[None, None, 44, 44, None]))
        print()
    if "suites" in parts:
        from .suite.parse import SuiteError, load_suite

        rows = []
        for path in _suite_files():
            try:
                suite = load_suite(path)
                rows.append([str(path), suite.name, len(suite.cells), suite.description])
            except SuiteError as e:
                rows.append([str(path), "", "invalid", str(e)])
        print("Suites:")
        rows = [[printable(v) if isinstance(v, str) else v for v in row] for row in rows]
        print(tabulate(rows, headers=["file", "name", "cells", "description"], maxcolwidths=[None, None, None, 70]))
    if "optimizers" in parts:  # docs/optimizers.md
        from .optimizers.catalogue import CATALOGUE, MISSING_PACKAGE, installed

        print("Optimizers (the optimizer key; HF Trainer names, built as the Trainer builds them):")
        print(tabulate([[n, e.note] for n, e in CATALOGUE.items()], headers=["optimizer", "built as"]))
        print("Refused (not modelled here): " + ", ".join(
            f"{n} ({pkg}{'' if installed(pkg) else ', not installed'})" for n, (pkg, _) in MISSING_PACKAGE.items()))
    return EXIT_OK


def _suite_files() -> list[Path]:
    seen, files = set(), []
    for folder in (Path("suites"), REPO_SUITES):
        for path in sorted(folder.glob("*.toml")) if folder.is_dir() else []:
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                files.append(path)
    return files


# ---- verbs implemented elsewhere (imported when used: `list` and `run` stay quick) -------

def _existing_dir(path: Path) -> Path:
    if not path.is_dir():
        raise CliError(f"{path}: no such results directory")
    return path


def _output_file(path: Path | None, flag: str) -> None:
    """An output file flag (``--out FILE``), checked before the work: a writable file or none yet."""
    if path is not None:
        writable_file(path, flag)


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    written = write_report(_existing_dir(args.dir))
    problems = f"; {len(_data_warnings)} warning(s) above: lines skipped or values unusable" if _data_warnings else ""
    print(printable(f"report written to {written}{problems}"))
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    from .report import compare

    if args.across is not None:
        from .report import ReportError
        from .report.across import compare_across

        for flag, given in (("--threshold", args.threshold), ("--sort", args.sort)):
            if given:
                raise ReportError(f"{flag} with --across: the cross-{args.across} table lists every pair in "
                                  "results order; leave it out")
        print(printable_lines(compare_across(_existing_dir(args.a), _existing_dir(args.b), args.across,
                                             where=args.where)))
        return EXIT_OK
    print(printable_lines(compare(_existing_dir(args.a), _existing_dir(args.b), where=args.where,
                                  threshold=args.threshold, sort=args.sort or "change")))
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from .results.gate import check_cli

    if (args.accept_regressions or args.drop_missing) and not args.update_baseline:
        raise CliError("--accept-regressions and --drop-missing only apply with --update-baseline")
    return int(check_cli(_existing_dir(args.dir), args.baseline, args.update_baseline,
                         allow_env_drift=args.allow_env_drift, accept_regressions=args.accept_regressions,
                         drop_missing=args.drop_missing))


def cmd_agreement(args: argparse.Namespace) -> int:
    from .report.agreement import agreement

    if not 0 < args.tolerance < 1:
        raise CliError(f"--tolerance: {args.tolerance} is not between 0 and 1")
    _output_file(args.out, "--out")
    text = agreement(_existing_dir(args.measured), _existing_dir(args.estimated), args.tolerance)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    print(printable_lines(text))
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from .claims import verify_cli

    if args.jobs < 1:
        raise CliError(f"--jobs: {args.jobs} is less than 1")
    return int(verify_cli(args.out, jobs=args.jobs, gpu_dir=args.gpu, progress=not args.no_progress))


def cmd_estimate(args: argparse.Namespace) -> int:
    from .one_cell.cli import run_estimate

    return EXIT_OK if run_estimate(args) == 0 else EXIT_FAILED_CELLS


def cmd_fit(args: argparse.Namespace) -> int:
    from .fit.cli import run_fit

    return EXIT_FAILED_CELLS if run_fit(args) else EXIT_OK
