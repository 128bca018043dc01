"""Probes: the claims' measurements that are not a training step, run through the launcher.

Two kinds, each one ``Cell`` (so it gets a stable id, a fresh process and resume like any
cell) whose ``options`` carry ``probe`` (the kind) plus the method options it needs:

- ``svd-time``: wall time of the SVD a PiSSA / LaMDA-svd init runs on one weight shape
  (``d_out x d_in``, fp32, random values: the time of a dense SVD does not depend on them).
  ``svd = "full"``: ``torch.linalg.svd(W, full_matrices=False)`` (PEFT's ``pissa``);
  ``svd = "lowrank"``: ``torch.svd_lowrank(W, q=r, niter=K)`` (PEFT's ``pissa_niter_K`` and
  LaMDA's ``svd_niter=K``). ``threads`` torch threads; the minimum of ``repeats`` runs.
- ``init-diff``: the model's output before and after applying the method (eval mode, no
  dropout, fp32), max absolute difference and the output's max absolute value: does the
  SVD init leave the output unchanged? (PiSSA's claim; for LaMDA's inits, a check of this
  harness's residual base, see ``methods/lamda/init.py``.)

``run_probe(cell_dict, artifacts_dir)`` is the launcher's runner for them; like
``runner.run_cell`` it returns a record and never raises. The figures sit under
``record["probe"]``; the memory/FLOP blocks of a training record stay null.
"""

from __future__ import annotations

import time
from typing import Any

from ..suite.cell import Cell

PROBE_SUITE = "claims-probes"
PROBE_KEYS = ("probe", "svd", "threads", "repeats", "scale_of")

# LLaMA2-7B weight shapes (d_out, d_in) and how many of each its 224 targets hold:
# q, k, v, o (4096 x 4096) x 4 x 32; gate, up (11008 x 4096) x 2 x 32; down (4096 x 11008) x 32.
LLAMA7B_TARGET_SHAPES = {(4096, 4096): 128, (11008, 4096): 64, (4096, 11008): 32}
# A full SVD of a LLaMA2-7B weight takes minutes on a 2-core CPU: full SVDs are timed at
# 1/4 and 1/2 of each side and extrapolated with the exponent the two scales give.
FULL_SVD_SCALES = (4, 2)
SVD_RANK = 64  # the authors' public code's r
SVD_NITER = 4


def svd_probe(d_out: int, d_in: int, svd: str, *, r: int = SVD_RANK, niter: int = SVD_NITER,
              threads: int = 2, repeats: int = 1, scale_of: tuple[int, int] | None = None) -> Cell:
    """The cell of one timed SVD (``scale_of``: the full-size shape this one stands for)."""
    options: dict[str, Any] = {"probe": "svd-time", "svd": svd, "threads": threads, "repeats": repeats}
    if svd == "lowrank":
        options["niter"] = niter
    if scale_of is not None:
        options["scale_of"] = list(scale_of)
    return Cell(workload="linear", method="pissa", r=r, d_in=d_in, d_out=d_out, dtype="fp32",
                device="cpu", mode="measure", steps=1, warmup=0, timeout_s=300,
                options=tuple(sorted(options.items())))


def init_probe(workload: str, method: str, r: int = 8, **method_options: Any) -> Cell:
    """The cell of one output-at-init check."""
    options = {"probe": "init-diff", **method_options}
    return Cell(workload=workload, method=method, r=r, dtype="fp32", device="cpu", mode="measure",
                batch=2, seq=16, steps=1, warmup=0, timeout_s=300, options=tuple(sorted(options.items())))


def default_probes() -> list[Cell]:
    """The probes of the claims ledger: SVD timings (claim 5) then outputs at init (claim 6)."""
    cells = []
    for d_out, d_in in LLAMA7B_TARGET_SHAPES:
        cells.append(svd_probe(d_out, d_in, "lowrank", repeats=3))
        for scale in FULL_SVD_SCALES:
            if scale == 2 and d_out != d_in:
                continue  # the exponent comes from the square shape; one half-scale full SVD is enough
            cells.append(svd_probe(d_out // scale, d_in // scale, "full", scale_of=(d_out, d_in)))
    for workload in ("tiny-llama", "minilm-l6"):
        cells.append(init_probe(workload, "pissa", niter=None))
        cells.append(init_probe(workload, "pissa", niter=SVD_NITER))
        cells.append(init_probe(workload, "lamda", svd_niter=None))  # init "svd": the paper's S = I form
        cells.append(init_probe(workload, "lamda", svd_niter=SVD_NITER))
        cells.append(init_probe(workload, "lamda", init="svd-sigma", svd_niter=None))  # ours: S = Sigma_r / s
    return cells


# ---- the runner ------------------------------------------------------------------------------

def run_probe(cell: dict, artifacts_dir: str | None = None) -> dict:
    """One probe cell in, one record out (never raises)."""
    from ..errors import one_line
    from ..runner.assemble import blank_record

    t0 = time.perf_counter()
    record = blank_record(cell)
    try:
        c = Cell.from_dict(cell)
        record["id"] = c.id
        kind = c.option("probe")
        if kind == "svd-time":
            record["probe"] = _svd_time(c)
        elif kind == "init-diff":
            record["probe"] = _init_diff(c)
        else:
            raise ValueError(f"probe cell has unknown probe kind {kind!r} (known: svd-time, init-diff)")
        record["status"], record["error"] = "ok", None
        record["probe"]["kind"] = kind
    except Exception as e:  # noqa: BLE001 - the contract: a record, whatever happened
        record["status"], record["error"] = "error", one_line(e)
    record["wall_s"] = round(time.perf_counter() - t0, 3)
    return record


def _svd_time(c: Cell) -> dict[str, Any]:
    import torch

    threads = int(c.option("threads", 2))
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(c.seed)
    w = torch.randn(c.d_out, c.d_in, generator=gen)
    svd = c.option("svd")
    if svd == "full":
        def run() -> None:
            torch.linalg.svd(w, full_matrices=False)
        call = "torch.linalg.svd(W, full_matrices=False)"
    elif svd == "lowrank":
        niter = int(c.option("niter"))

        def run() -> None:
            torch.svd_lowrank(w, q=c.r, niter=niter)
        call = f"torch.svd_lowrank(W, q={c.r}, niter={niter})"
    else:
        raise ValueError(f"svd-time probe: svd must be 'full' or 'lowrank', got {svd!r}")
    times = []
    for _ in range(int(c.option("repeats", 1))):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return {"shape": [c.d_out, c.d_in], "svd": svd, "call": call, "threads": threads,
            "times_s": times, "seconds": min(times), "scale_of": c.option("scale_of"),
            "device": "cpu", "torch": torch.__version__, "load_average_1min": _load_average()}


def _load_average() -> float | None:
    """The machine's 1-minute load: a timing taken while other work runs is slower than alone."""
    import os

    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _init_diff(c: Cell) -> dict[str, Any]:
    import torch

    from ..model import workloads
    from ..methods import AdapterSpec, get_method

    model = workloads.build_model(c, "cpu").eval()
    inputs = workloads.make_inputs(c, "cpu")
    with torch.no_grad():
        before = _output(model, inputs)
    method = get_method(c.method)
    options = {k: v for k, v in c.options if k not in PROBE_KEYS}
    spec = AdapterSpec(r=c.r, alpha=c.alpha, targets=workloads.resolve_targets(c, model),
                       dtype=workloads.torch_dtype(c.dtype), options=options, total_steps=10, seed=c.seed)
    applied = method.apply(model, spec)
    applied.model.eval()
    with torch.no_grad():
        after = _output(applied.model, inputs)
    diff = (after.double() - before.double()).abs().max().item()
    scale = before.double().abs().max().item()
    return {"max_abs_diff": diff, "max_abs_output": scale, "relative": diff / scale if scale else None,
            "init": applied.info.get("init") or applied.info.get("init_lora_weights"),
            "adapted_layers": len(applied.adapted),
            "method_info": {k: v for k, v in applied.info.items() if isinstance(v, (str, int, float, bool))}}


def _output(model, inputs: dict) -> "Any":
    """The model's output tensor for ``inputs`` (logits, or the last hidden state; the stack's output)."""
    if "x" in inputs:
        return model(inputs["x"])
    kwargs = {k: v for k, v in inputs.items() if k != "labels"}
    out = model(**kwargs)
    for name in ("logits", "last_hidden_state"):
        value = getattr(out, name, None)
        if value is not None:
            return value
    raise ValueError(f"init-diff probe: model output {type(out).__name__} has neither logits nor last_hidden_state")
