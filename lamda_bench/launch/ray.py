"""Ray launcher: every cell a Ray task in a fresh worker process; results written by the driver.

Why this shape:
- Ray, not a home-made scheduler, places cells on a cluster's nodes. Each cell is a task
  with ``max_calls=1``: its worker process runs that one cell and exits, so peaks, caches and
  global flags of one cell never reach the next (as with the local launcher's spawn).
- A GPU cell (``launch.is_gpu_cell`` against the cluster's GPU count) asks for one whole GPU
  (``num_gpus=1``; Ray sets ``CUDA_VISIBLE_DEVICES``); every cell asks for one CPU. A
  ``cuda`` cell on a cluster without GPUs runs on CPUs and its runner records why.
- Only the driver writes ``results.jsonl``, through ``launch.Sweep``: the same record format,
  resume, progress bar and summary as the local launcher; ``launch.launcher`` says ``ray``
  and ``launch.node`` where the cell ran.
- ``jobs`` is the number of cells in flight. For a local instance started here it is also
  the instance's CPU count; on a cluster (``address``) Ray's resources further limit it.
- A task is a generator: it first yields a "started" marker, then the record. The cell's
  ``timeout_s`` counts from the marker, so time spent queued for a free GPU is not charged;
  past it the task is cancelled (``force=True`` kills the worker) and recorded ``timeout``.
- No retries (``max_retries=0``): a worker that dies (signal, segfault, kernel OOM kill),
  a node that disappears or a task Ray cannot run becomes an ``error`` record with the
  reason; a kill by Ray's memory monitor becomes ``oom``. The sweep goes on; ``--retry-failed``
  re-runs ``error`` and ``timeout`` cells later. A cell never gets two records in one run.
- Logs and artifacts: when the output directory is visible on the worker's node (the same
  machine, or a shared filesystem: the worker finds the token file the driver put in
  ``logs/`` for this run) the cell writes ``logs/<id>.log`` and its artifacts there, as locally. Otherwise its log goes to a temporary file on that node, whose tail (1 MiB)
  comes back with the record, and no artifacts are written (``launch.artifacts`` says so).
- Ray is optional (``pip install 'lamda-bench[ray]'``); this module imports it lazily.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..suite.cell import Cell
from .local import DEFAULT_RUNNER, POLL_S, _raise_interrupt_on_sigterm, _utc_now, cuda_device_count, is_gpu_cell
from .child import LaunchError, redirect_output, run_runner
from .sweep import RunSummary, Sweep

RAY_MISSING = "--launcher ray needs Ray, which is not installed: pip install 'lamda-bench[ray]'"
LOG_TAIL_BYTES = 1 << 20  # the part of a worker-local log sent back with the record


def import_ray():
    """The ``ray`` module, or a one-line LaunchError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise LaunchError(RAY_MISSING) from None
    return ray


# ---- the worker side -------------------------------------------------------------------------

def cell_task(runner: str, cell: dict, cell_id: str, out_dir: str, token: str):
    """Body of a cell's Ray task (a generator): yield a started marker, then (record, log tail).

    ``token`` names the file the driver wrote into ``out_dir/logs``: seeing it means this node
    shares the driver's output directory. The log tail is None when the log went straight there."""
    import tempfile

    import ray

    shared = os.path.isfile(os.path.join(out_dir, "logs", token))
    if shared:
        log_path = os.path.join(out_dir, "logs", f"{cell_id}.log")
    else:
        fd, log_path = tempfile.mkstemp(prefix=f"lamda-bench-{cell_id}-", suffix=".log")
        os.close(fd)
    yield {"pid": os.getpid(), "node": ray.util.get_node_ip_address(), "log": log_path, "shared": shared}
    redirect_output(log_path)
    record = run_runner(runner, cell, out_dir if shared else None)
    tail = None
    if not shared:
        with open(log_path, "rb") as f:
            f.seek(max(0, os.path.getsize(log_path) - LOG_TAIL_BYTES))
            tail = f.read().decode("utf-8", errors="replace")
        os.unlink(log_path)
    yield record, tail


# ---- the driver side -------------------------------------------------------------------------

@dataclass
class _InFlight:
    cell: Cell
    submitted: float
    started: float | None = None  # monotonic time the started marker arrived
    started_at: str | None = None
    marker: dict[str, Any] | None = None


def run_cells_ray(
    cells: Sequence[Cell],
    out_dir: str | Path,
    suite: str,
    runner: str = DEFAULT_RUNNER,
    jobs: int = 1,
    retry_failed: bool = False,
    progress: bool = True,
    address: str | None = None,
) -> RunSummary:
    """Run the cells not yet recorded in ``out_dir/results.jsonl`` as Ray tasks.

    ``address``: an existing cluster (``"auto"`` or ``"HEAD:6379"``, the driver running on a node of
    it); without it, an already initialised Ray connection is used, else a local instance with
    ``jobs`` CPUs is started (and shut down at the end)."""
    if jobs < 1:
        raise LaunchError(f"jobs: {jobs} is less than 1")
    ray = import_ray()
    sweep = Sweep(cells, out_dir, suite, runner, retry_failed, progress)
    if not sweep.pending:
        return sweep.summary
    # The worker decides from the absolute path whether it sees the output directory.
    sweep.out_dir = sweep.out_dir.absolute()
    started_here = connect(address, jobs)
    previous_term = _raise_interrupt_on_sigterm()
    in_flight: dict[Any, _InFlight] = {}
    token = sweep.out_dir / "logs" / f".ray-driver-{os.getpid()}-{time.time_ns()}"
    try:
        sweep.start()
        token.touch()
        gpus = int(ray.cluster_resources().get("GPU", 0))
        task = ray.remote(max_calls=1, max_retries=0, num_cpus=1)(cell_task)
        pending = sweep.pending
        while pending or in_flight:
            while pending and len(in_flight) < jobs:
                cell = pending.pop(0)
                options = {"num_gpus": 1} if gpus and is_gpu_cell(cell, gpus) else {}
                gen = task.options(**options, name=f"lamda-bench-{cell.id}").remote(
                    runner, cell.to_dict(), cell.id, str(sweep.out_dir), token.name)
                in_flight[gen] = _InFlight(cell=cell, submitted=time.monotonic())
                sweep.started(cell)
            for gen in _ready(ray, list(in_flight)):
                record = _advance(ray, gen, in_flight[gen], sweep)
                if record is not None:
                    _finish(sweep, in_flight.pop(gen), record)
            for gen, run in list(in_flight.items()):
                if run.started is not None and time.monotonic() - run.started > run.cell.timeout_s:
                    ray.cancel(gen, force=True)
                    del in_flight[gen]
                    _finish(sweep, run, {"status": "timeout", "error": (
                        f"no result after {run.cell.timeout_s:g} s (timeout_s); the Ray task was cancelled "
                        f"and its worker stopped")})
    except KeyboardInterrupt:
        sweep.summary.interrupted = True
        for gen in in_flight:
            ray.cancel(gen, force=True)
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
        token.unlink(missing_ok=True)
        sweep.close()
        if started_here:
            ray.shutdown()
    return sweep.summary


def connect(address: str | None, jobs: int) -> bool:
    """Connect to ``address``, reuse a live connection, or start a local instance with ``jobs``
    CPUs (and the GPUs NVML sees). Returns whether ``ray.init`` was called here, so that the
    caller shuts down (local instance) or disconnects (cluster) when done."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    if address:
        check_reachable(address)
        try:
            ray.init(address=address, log_to_driver=False)
        except Exception as e:  # ConnectionError, RuntimeError, ...: say which address, in one line
            first = (str(e).strip().splitlines() or [""])[0]
            raise LaunchError(f"--address {address}: cannot connect to a Ray cluster ({type(e).__name__}: "
                              f"{first})") from None
        return True
    # Workers of a local instance inherit the driver's environment: hand them this sys.path,
    # as the local launcher's spawn does, so a runner importable here imports there.
    import sys

    saved = os.environ.get("PYTHONPATH")
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    os.environ["PYTHONPATH"] = os.pathsep.join(paths + ([saved] if saved else []))
    try:
        ray.init(num_cpus=jobs, num_gpus=cuda_device_count(), include_dashboard=False, log_to_driver=False)
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    return True


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds on a HOST:PORT (or ray://HOST:PORT) where nothing listens: ``ray.init``
    retries such an address for minutes. ``auto`` and other names are left to Ray."""
    import socket

    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise LaunchError(f"--address {address}: nothing answers at {host}:{port} "
                          f"({type(e).__name__}: {e.strerror or e})") from None


def _ready(ray, gens: list) -> list:
    """The generators with a new item (or a failure) to read, waiting at most POLL_S."""
    if not gens:
        return []
    ready, _ = ray.wait(gens, num_returns=1, timeout=POLL_S)
    if not ready:
        return []
    ready, _ = ray.wait(gens, num_returns=len(gens), timeout=0)
    return ready


def _advance(ray, gen, run: _InFlight, sweep: Sweep) -> dict[str, Any] | None:
    """Read the generator's next item: the started marker (returns None) or the record."""
    try:
        item = ray.get(next(gen))
    except StopIteration:
        return {"status": "error", "error": "the Ray task ended without a record"}
    except ray.exceptions.RayError as e:
        return _failure_record(ray, e, run)
    if run.started is None:
        run.started, run.started_at, run.marker = time.monotonic(), _utc_now(), item
        return None
    record, tail = item
    if tail:
        sweep.log_path(run.cell).write_text(tail, encoding="utf-8")
    return record


def _failure_record(ray, e: Exception, run: _InFlight) -> dict[str, Any]:
    """A record for a task that gave no result: which failure, where, and where its log is."""
    ex = ray.exceptions
    first = (str(e).strip().splitlines() or [""])[0]
    marker = run.marker or {}
    node = f" on node {marker['node']}" if marker.get("node") else ""
    if marker.get("shared"):
        log = f"; see logs/{run.cell.id}.log"
    elif marker.get("log"):
        log = f"; its log stays{node} at {marker['log']}"
    else:
        log = ""
    if isinstance(e, ex.OutOfMemoryError):
        return {"status": "oom", "error": f"the cell's worker was killed by Ray's memory monitor{node} "
                                          f"(node memory above its threshold){log}"}
    if isinstance(e, ex.NodeDiedError):
        return {"status": "error", "error": f"the node running the cell died{node}: {first}"}
    if isinstance(e, ex.WorkerCrashedError):
        return {"status": "error", "error": f"the cell's worker process died without a result{node} "
                                            f"(a signal, a segfault or the kernel's OOM killer){log}"}
    if isinstance(e, ex.RayTaskError):  # the task body failed outside the runner (an import, say)
        cause = type(e.cause).__name__ if getattr(e, "cause", None) is not None else "error"
        return {"status": "error", "error": f"the Ray task failed{node} ({cause}): {first}"}
    return {"status": "error", "error": f"Ray could not run the cell{node} ({type(e).__name__}): {first}"}


def _finish(sweep: Sweep, run: _InFlight, record: dict[str, Any]) -> None:
    marker = run.marker or {}
    launch: dict[str, Any] = {"launcher": "ray", "node": marker.get("node")}
    if run.started is not None:
        launch["queued_s"] = round(run.started - run.submitted, 3)
    if marker and not marker.get("shared"):
        launch["artifacts"] = "none written: the output directory is not visible on the worker's node"
    sweep.record(run.cell, record, run.started_at or _utc_now(), run.started or run.submitted, launch)
