"""Resolution: the cell as given -> a ``Plan`` (rules checked, dtype, device, method options
and the schedule's horizon resolved once), before anything is built.

The run mode is decided by the conductor (``runner/__init__.py``): on a CPU in ``auto`` mode the
decision runs an estimate first, which sits above this module.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..model import precision
from ..model import workloads
from ..suite.cell import Cell, CellError


@dataclass(frozen=True)
class Plan:
    """One cell, resolved. ``cell`` is what is built (the fp32 policy builds the model in fp32
    whatever the dtype); ``requested`` is the cell as asked, which the record keeps."""

    requested: Cell
    cell: Cell
    dtype: torch.dtype  # cell.dtype as a torch dtype
    device: str  # "cpu" or "cuda" ("auto" resolved; where a measurement would run)
    options: dict  # the method's options (``total_steps`` taken out)
    horizon: int  # the steps LaMDA's freezing schedule is laid over
    timeline: bool  # keep the module-boundary timeline (only when there is an artifacts dir)


def resolve(requested: Cell, timeline: bool) -> Plan:
    """Check the cell's rules and resolve it; one-line user errors, nothing built."""
    validate(requested)
    # The fp32 policy builds the model in fp32 whatever the dtype; the record keeps the cell as asked.
    c = dataclasses.replace(requested, dtype=precision.build_dtype(precision.get_policy(requested.precision),
                                                                   requested.dtype))
    dtype = workloads.torch_dtype(c.dtype)
    workloads.get_workload(c.workload)  # unknown workload: one line, before any build
    device = resolve_device(c)
    options, horizon = split_options(c)
    return Plan(requested=requested, cell=c, dtype=dtype, device=device, options=options,
                horizon=horizon or (c.warmup + 1 + c.steps), timeline=timeline)


def validate(c: Cell) -> None:
    c.validate()  # the cell rules (cell.py), the same the suite parser applies
    workloads.torch_dtype(c.dtype)  # one-line WorkloadError for an unknown dtype


def resolve_device(c: Cell) -> str:
    if c.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if c.device == "cuda" and c.mode != "estimate" and not torch.cuda.is_available():
        why = (f"this torch build ({torch.__version__}) has no CUDA support" if torch.version.cuda is None
               else "no CUDA device is visible here")
        from ..model.fake import fake_device_supported

        estimate = ", or mode = 'estimate'" if fake_device_supported("cuda") else ""
        raise CellError(f"device 'cuda' (mode {c.mode}): {why}; use device = 'cpu' or 'auto'{estimate}")
    return c.device


def estimate_device(c: Cell, device: str) -> tuple[str, str]:
    """(device the fake tensors live on, why)."""
    from ..model.fake import fake_device_supported

    if c.device != "auto":
        return c.device, f"the cell asks for {c.device}"
    if device == "cuda":
        return "cuda", "auto: a GPU is present"
    if fake_device_supported("cuda"):
        return "cuda", "auto on a machine without a GPU: estimated for cuda, the device a full-size step runs on"
    return "cpu", (f"auto on a machine without a GPU; this torch build ({torch.__version__}) cannot fake cuda "
                   "tensors, so the estimate follows the cpu kernels")


def split_options(c: Cell) -> tuple[dict, int | None]:
    """(method options, total_steps override): ``total_steps`` is a run setting, not a method's."""
    opts = dict(c.options)
    horizon = opts.pop("total_steps", None)
    if horizon is not None and (isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1):
        raise CellError(f"option total_steps must be an integer >= 1, got {horizon!r}")
    return opts, horizon
