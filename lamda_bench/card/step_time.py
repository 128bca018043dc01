"""Predicted step time on a named card from the traced step's ops (``measure/ops.py``). Pure.

Each op that launches a kernel costs ``max(compute, memory) + launch``: its FLOPs at the
dtype's peak times an achievable fraction that depends on its kind and size, against its bytes
at the card's bandwidth times a size-bucketed fraction (``card/efficiency.py``). The host
dispatches every op in eager mode, views included; the device cannot run ahead of it, so the
step is the larger of the device's sum and the host's sum. A prediction, never a measurement:
its fields are its own (docs/step-time.md).
"""

from __future__ import annotations

import math

from . import efficiency as eff
from .cuda_dropout import cuda_dropout
from .rates import Rates, host_link_for, matmul_rate, rates_for

TIME_MODEL_VERSION = "2"
NOT_MODELLED = (
    "torch.compile and CUDA graphs (eager dispatch assumed)",
    "overlap of communication with compute (single device)",
    "overlap of host and device beyond max(host, device) per step; data loading",
    "kernel choice per shape (one efficiency curve per op kind); fused or custom kernels outside the trace "
    "(Liger, Unsloth's Triton kernels)",
    "clocks below boost under power or thermal limits",
    "overlap of activation offloading's host-link copies with compute (CUDA streams): priced serially at the "
    "link's datasheet rate",
)
PARTS = ("compute_bound_s", "memory_bound_s", "launch_s", "device_s", "host_s")


def _interp(buckets, size: float) -> float:
    """Log-linear interpolation over (threshold, fraction) pairs, largest threshold first."""
    if size >= buckets[0][0]:
        return buckets[0][1]
    for (hi, f_hi), (lo, f_lo) in zip(buckets, buckets[1:]):
        if size >= lo:
            t = (math.log(size) - math.log(lo)) / (math.log(hi) - math.log(lo))
            return f_lo + t * (f_hi - f_lo)
    return buckets[-1][1]


def gemm_fraction(card: str, flops: float) -> float:
    """Achievable fraction of the matmul peak for a GEMM of ``flops`` on ``card``."""
    buckets = eff.value("gemm_buckets")
    top = eff.value("gemm_peak_fraction").get(card, eff.value("gemm_peak_fraction_default"))
    return _interp(buckets, max(flops, 1.0)) * top / buckets[0][1] * eff.value("gemm_calibration")


def attention_fraction(card: str, backward: bool) -> float:
    """Achievable fraction of the bf16 peak of a flash-attention kernel on ``card``."""
    name = "attention_backward_fraction" if backward else "attention_forward_fraction"
    return eff.value(name + "_by_card").get(card, eff.value(name))


def memory_seconds(rates: Rates, nbytes: float, factor: float = 1.0) -> float:
    if nbytes <= 0:
        return 0.0
    fraction = _interp(eff.value("memory_buckets"), nbytes) * factor * eff.value("memory_calibration")
    return nbytes / (rates.bandwidth * fraction)


def op_cost(op: dict, rates: Rates, allow_tf32: bool = False) -> dict:
    """One call of ``op``: compute, memory and launch seconds on the device, host seconds."""
    kind = op["kind"]
    if kind == "none":
        return {"compute": 0.0, "memory": 0.0, "launch": 0.0, "host": eff.value("host_view_s")}
    nbytes = op["bytes_read"] + op["bytes_written"]
    compute = 0.0
    launches = 1
    host = eff.value("host_op_s")
    if kind == "gemm":
        compute = op["flops"] / (matmul_rate(rates, op["dtype"], allow_tf32) * gemm_fraction(rates.name, op["flops"]))
        memory = memory_seconds(rates, nbytes)
    elif kind == "attention":
        work = op["flops"] * (eff.value("attention_causal_work") if op.get("causal") else 1.0)
        frac = attention_fraction(rates.name, op["phase"] == "backward")
        compute = work / (matmul_rate(rates, op["dtype"], allow_tf32) * frac)
        memory = memory_seconds(rates, nbytes)
    elif kind == "host_link":  # activation offloading's copy to or from host memory: the link, not HBM
        link = host_link_for(rates.name)
        memory = op["bytes_written"] / link[0] if link is not None else memory_seconds(rates, nbytes)
    elif kind == "optimizer":
        memory = memory_seconds(rates, nbytes, eff.value("optimizer_factor"))
        launches = max(1, math.ceil(op.get("tensors", 1) / eff.value("foreach_tensors_per_launch")),
                       math.ceil(op.get("elements", 0) / eff.value("foreach_elements_per_launch")))
        host += eff.value("host_foreach_tensor_s") * op.get("tensors", 1)
    else:
        memory = memory_seconds(rates, nbytes, eff.value(f"{kind}_factor"))
    return {"compute": compute, "memory": memory, "launch": launches * eff.value("launch_s"), "host": host}


def predict_step_time(ops: list[dict], card: str, allow_tf32: bool = False) -> dict:
    """The step's predicted seconds on ``card`` from its op list, with its parts.

    ``compute_bound_s`` / ``memory_bound_s``: the device time of the ops whose compute / memory
    bound is the larger; ``launch_s``: the kernels' fixed costs; ``device_s`` their sum;
    ``host_s``: eager dispatch of every op; ``step_s = max(device_s, host_s)``.
    """
    rates = rates_for(card)
    # A steady-state step: no lazy optimizer state init; CPU-kernel dropouts as CUDA's fused kernel.
    ops = cuda_dropout([op for op in ops if not op.get("first_step_only")])
    parts = dict.fromkeys(PARTS, 0.0)
    by_kind: dict[str, float] = {}
    kernels = 0
    for op in ops:
        c = op_cost(op, rates, allow_tf32)
        n = op["count"]
        bound = "compute_bound_s" if c["compute"] > c["memory"] else "memory_bound_s"
        device = max(c["compute"], c["memory"]) + c["launch"]
        parts[bound] += n * max(c["compute"], c["memory"])
        parts["launch_s"] += n * c["launch"]
        parts["device_s"] += n * device
        parts["host_s"] += n * c["host"]
        if op["kind"] != "none":
            by_kind[op["kind"]] = by_kind.get(op["kind"], 0.0) + n * device
            kernels += n
    return _finish(parts, by_kind, rates.name, kernels, sum(op["count"] for op in ops))


def _finish(parts: dict, by_kind: dict, card: str, kernels: float, ops: float) -> dict:
    step = max(parts["device_s"], parts["host_s"])
    return {**parts, "step_s": step, "bound": "host" if parts["host_s"] > parts["device_s"] else "device",
            "by_kind_s": by_kind, "kernels": kernels, "ops": ops, "card": card,
            "time_model_version": TIME_MODEL_VERSION, "not_modelled": list(NOT_MODELLED)}


class NotAffine(Exception):
    """The probe depths' predictions do not lie on a line (the blocks differ).

    An internal signal, like extrapolate.NotCertified: not bad input, so not a ValueError (every
    ValueError of the package is a UserError, tests/test_errors.py)."""


# A foreach optimizer op walks every block's tensors at once: its size bucket and its launch count
# (a ceiling) move with depth, so the parts are affine only to about 1e-5 (seen on LLaMA2-7B LoRA).
AFFINE_REL_TOL = 1e-3


def extrapolate_time(per_depth: dict[int, dict], target_depth: int, rel_tol: float = AFFINE_REL_TOL) -> dict:
    """The prediction at ``target_depth`` from predictions at three or more probe depths.

    Every part is a sum over ops and the blocks repeat, so each is affine in depth: fitted on the
    first two depths, verified on every other (``NotAffine`` if one is off by more than rel_tol of
    that depth's step, ``AFFINE_REL_TOL`` by default);
    ``step_s`` is then the max of the extrapolated device and host sums, never a fitted value.
    """
    depths = sorted(per_depth)
    if len(depths) < 3:
        raise ValueError(f"extrapolate_time needs three probe depths to verify one, got {depths}")
    a, b = depths[0], depths[1]

    def line(get) -> float:
        ya, yb = get(per_depth[a]), get(per_depth[b])
        slope = (yb - ya) / (b - a)
        for d in depths[2:]:
            want, got = ya + slope * (d - a), get(per_depth[d])
            scale = max(per_depth[d]["device_s"], per_depth[d]["host_s"], 1e-12)  # relative to the step
            if abs(want - got) > rel_tol * scale:
                raise NotAffine(f"step time not affine in depth: {want!r} predicted at depth {d}, {got!r} traced")
        return ya + slope * (target_depth - a)

    parts = {k: line(lambda p, k=k: p[k]) for k in PARTS}
    kinds = sorted(set().union(*(p["by_kind_s"] for p in per_depth.values())))
    by_kind = {k: line(lambda p, k=k: p["by_kind_s"].get(k, 0.0)) for k in kinds}
    first = per_depth[a]
    out = _finish(parts, by_kind, first["card"], line(lambda p: p["kernels"]), line(lambda p: p["ops"]))
    out["extrapolated_from"] = depths
    return out
