"""The readable answer of ``lamda-bench estimate``: the peak, where it sits (by category and
by phase), trainable parameters, FLOPs, the closed forms beside the traced figures, and
whether the figures are an estimate or a measurement. Bytes print as GiB/MiB (2^30/2^20) with
the raw bytes beside the peak."""

from __future__ import annotations

from typing import Any

from tabulate import tabulate

from ..results.record import AT_PEAK, CATEGORIES, FLOPS, MEMORY, PARAMS, PREDICTED_FLOPS, PREDICTED_MEMORY, \
    PREDICTED_PARAMS, PREDICTED_SHARDED, get
from ..report.units import UNITS_NOTE, fmt_bytes, fmt_count, fmt_flops

SHOWN_KEYS = ("workload", "method", "r", "alpha", "targets", "batch", "seq", "dtype", "precision", "quant",
              "optimizer", "gradient_checkpointing", "world_size", "parallel")
PHASES = (("forward", MEMORY.peak_forward), ("backward", MEMORY.peak_backward), ("optimizer step", MEMORY.peak_step))
CLOSED_FORMS = (
    ("trainable parameters", PARAMS.trainable, PREDICTED_PARAMS.trainable, fmt_count),
    ("weights", MEMORY.weights, PREDICTED_MEMORY.weights, fmt_bytes),
    ("gradients", MEMORY.grads, PREDICTED_MEMORY.grads, fmt_bytes),
    ("optimizer state", MEMORY.optimizer, PREDICTED_MEMORY.optimizer, fmt_bytes),
    ("saved activations (adapter)", MEMORY.saved_activations_adapter, PREDICTED_MEMORY.saved_activations_adapter,
     fmt_bytes),
    ("adapter forward FLOPs", FLOPS.adapter_forward, PREDICTED_FLOPS.adapter_forward, fmt_flops),
    ("adapter backward FLOPs", FLOPS.adapter_backward, PREDICTED_FLOPS.adapter_backward, fmt_flops),
)


def kind_of(record: dict[str, Any]) -> str:
    """"estimate" (fake tensors, the real step traced) or "measured" (real tensors on a device)."""
    from ..results.record import run_mode

    return "estimate" if run_mode(record) == "estimate" else "measured"


def describe(record: dict[str, Any], reused: bool, where: str) -> str:
    cell = record.get("cell") or {}
    settings = " ".join(f"{k}={_value(cell.get(k))}" for k in SHOWN_KEYS if k in cell)
    if cell.get("kbit_prepare"):  # said only when on: every other cell's line stays as it was
        settings += " kbit_prepare=true"
    if cell.get("loss", "model") != "model":  # said only when set, likewise
        settings += f" loss={cell['loss']}"
    if cell.get("offload_activations"):
        settings += " offload_activations=true"
    if cell.get("objective", "sft") != "sft":  # said only when set, likewise
        settings += f" objective={cell['objective']}" + (" precompute_ref_log_probs=true"
                                                         if cell.get("precompute_ref_log_probs") else "")
    kind = kind_of(record)
    how = (f"estimate: fake tensors on {get(record, 'info.estimate_device', 'cpu')}, the real training step traced; "
           "nothing measured on a GPU") if kind == "estimate" else \
        f"measured on {get(record, 'env.device_name', 'the device')}"
    lines = [settings, f"{how}", f"{record.get('id')}: " + ("already recorded in " if reused else "recorded in ") + where]
    vlm = get(record, "info.model.vlm")
    if vlm:  # image-text: what the images became (lamda_bench/model/vlm.py)
        lines.append(f"images: {vlm['images_per_sample']} per sample at {vlm['image_size']}, "
                     f"{vlm['tokens_per_image']} tokens each; per sample {vlm['text_tokens']} text + "
                     f"{vlm['image_tokens']} image = {vlm['total_tokens']} tokens (seq counts text tokens)")
    loss = get(record, "info.loss")
    if loss:  # the fused loss: what was modelled (lamda_bench/model/fused_ce.py)
        lines.append(f"loss: fused linear cross-entropy in {loss['chunks']} chunks of {loss['chunk_size']} rows "
                     f"({fmt_bytes(loss['logits_chunk_bytes'])} of logits each; the full fp32 logits would be "
                     f"{fmt_bytes(loss['full_logits_fp32_bytes'])}); modelled on {loss['modelled_on']}")
    obj = get(record, "info.objective")
    if obj:  # a preference step: what was modelled (lamda_bench/model/objective.py)
        rows = ", ".join(f"{k} {v}" for k, v in obj["rows"].items())
        lines.append(f"objective: {obj['objective']} as {obj['read_from']} runs it; reference: {obj['reference']}; "
                     f"rows: {rows}")
    if record.get("status") != "ok":
        return "\n".join(lines + [f"status {record.get('status')}: {record.get('error')}"])
    lines += ["", _peak(record, kind), _params(record), _flops(record)] + _moe(record) + _model_notes(record) + \
        ["", _closed_forms(record), UNITS_NOTE]
    return _units_beyond(lines)


# Units past the note's (a huge cell: seq = 10^9), defined when the answer uses them.
_LARGE_UNITS = {"TiB": "TiB = 2^40 bytes", "PiB": "PiB = 2^50 bytes", "PFLOP": "PFLOP = 10^15",
                "EFLOP": "EFLOP = 10^18 floating-point operations"}


def _units_beyond(lines: list[str]) -> str:
    text = "\n".join(lines)
    used = [meaning for unit, meaning in _LARGE_UNITS.items() if f" {unit}" in text]
    return text + (" Also: " + ", ".join(used) + "." if used else "")


def _peak(record: dict[str, Any], kind: str) -> str:
    peak = get(record, MEMORY.peak)
    phases = [(name, get(record, path)) for name, path in PHASES]
    phase = max((p for p in phases if p[1] is not None), key=lambda p: p[1], default=(None, None))[0]
    rows = [[c, fmt_bytes(get(record, AT_PEAK.path(c))), _share(get(record, AT_PEAK.path(c)), peak)]
            for c in CATEGORIES]
    per_rank = get(record, "memory.per_rank.at_peak")
    if per_rank:
        rows += [[c, fmt_bytes(v), _share(v, peak)] for c, v in per_rank.items() if c not in CATEGORIES]
    head = f"peak memory ({kind}): {fmt_bytes(peak)} ({peak} B), reached in {phase or 'n/a'}"
    by_phase = "peak by phase: " + ", ".join(f"{name} {fmt_bytes(v)}" for name, v in phases)
    lines = [head, tabulate(rows, headers=["at the peak", "bytes", "share"], disable_numparse=True), by_phase]
    lines += _card(record, kind)
    host = get(record, MEMORY.host_offloaded_peak)
    if host is not None:  # offload_activations (docs/offload.md): host memory, outside the peak above
        off = get(record, "info.offload_activations") or {}
        lines.append(f"offloaded activations (host memory, not in the peak): {fmt_bytes(host)} ({host} B) at most, "
                     f"{off.get('offloaded_tensors', 'n/a')} saved tensors; host link traffic "
                     f"{fmt_bytes(off.get('host_link_bytes_per_step', 0))} a step (out in forward, back in backward); "
                     f"modelled on {off.get('modelled_on', 'n/a')}; not modelled: {off.get('not_modelled', 'n/a')}")
    paged = get(record, MEMORY.optimizer_paged)
    if paged:  # docs/optimizers.md
        lines.append(f"paged optimizer state (CUDA unified memory, evictable to host RAM; not in the peak): "
                     f"{fmt_bytes(paged)} ({paged} B); lamda-bench fit counts it unless --paged-evictable")
    return "\n".join(lines)


def _card(record: dict[str, Any], kind: str) -> list[str]:
    """With a card: the tensor peak, the allocator's reserved peak and the device total, each
    labelled as what it is (docs/card-memory.md)."""
    card = get(record, "cell.card")
    reserved, device = get(record, MEMORY.reserved_peak), get(record, MEMORY.device_peak)
    if not card or reserved is None:
        return []
    allocator = get(record, "info.allocator") or {}
    peak = get(record, MEMORY.peak)
    hidden = sum(h["bytes"] for h in allocator.get("hidden", []))
    total = get(record, "info.allocator.capacity")
    lines = [f"on the card {card} (predicted: the caching allocator's model replayed over the run, "
             f"settings {(allocator.get('settings') or {}).get('text') or 'default'}):",
             f"  tensor peak ({kind}):              {fmt_bytes(peak)} ({peak} B)",
             f"  reserved peak (predicted):      {fmt_bytes(reserved)} ({reserved} B), "
             f"{_share(reserved - peak, peak)} above the tensor peak, BLAS workspaces {fmt_bytes(hidden)} included",
             f"  device peak (predicted, as nvidia-smi would show it): {fmt_bytes(device)} ({device} B): reserved "
             f"+ context {fmt_bytes(allocator.get('context_bytes'))}"
             + ("" if "assumed" not in str(allocator.get("context_source")) else " (assumed: the H100's)")]
    step = get(record, "time.step_s_predicted")
    if step is not None:
        model = get(record, "info.time_model") or {}
        band = model.get("error_band") or {}
        lines.append(f"  step time (predicted, {model.get('bound', '?')}-bound, time model v{model.get('time_model_version')}): "
                     f"{step:.3f} s, {get(record, 'time.tokens_per_s_predicted'):,.0f} tokens/s; error out of sample "
                     f"(docs/step-time.md): median {band.get('median_abs_error', 0) * 100:.1f}%, "
                     f"largest {band.get('max_abs_error', 0) * 100:.1f}% over {band.get('points', '?')} points")
    if allocator.get("oom"):
        lines.append(f"  DOES NOT FIT: {allocator['oom']}")
    elif total is not None:
        lines.append(f"  fits: {fmt_bytes(total - reserved)} left to the allocator on the card")
    return lines


def _params(record: dict[str, Any]) -> str:
    trainable, total = get(record, PARAMS.trainable), get(record, PARAMS.total)
    share = f" ({100 * trainable / total:.3f}%)" if trainable is not None and total else ""
    return f"trainable parameters: {fmt_count(trainable)} of {fmt_count(total)}{share}"


def _flops(record: dict[str, Any]) -> str:
    return (f"FLOPs per step: forward {fmt_flops(get(record, FLOPS.forward))}, backward "
            f"{fmt_flops(get(record, FLOPS.backward))} (adapter: forward {fmt_flops(get(record, FLOPS.adapter_forward))}, "
            f"backward {fmt_flops(get(record, FLOPS.adapter_backward))})")


def _moe(record: dict[str, Any]) -> list[str]:
    """A mixture-of-experts model: its experts' share of the FLOPs, and whether they were adapted."""
    moe = get(record, "info.model.moe")
    if not isinstance(moe, dict):
        return []
    lines = [f"experts: {moe.get('experts')} per block, top-{moe.get('top_k')}, run by "
             f"{moe.get('experts_implementation')}; their FLOPs: forward {fmt_flops(get(record, FLOPS.experts_forward))}"
             f", backward {fmt_flops(get(record, FLOPS.experts_backward))}; router aux loss "
             f"{'on' if moe.get('output_router_logits') else 'off'}"]
    not_adapted = get(record, "info.method.not_adapted")
    if not_adapted:
        lines.append(f"NOTE: {not_adapted}")
    unquantized = get(record, "info.quant.experts_unquantized")
    if unquantized:
        lines.append(f"NOTE: quantized base, but {unquantized}")
    return lines


def _model_notes(record: dict[str, Any]) -> list[str]:
    """What the estimate traced that is not what a fine-tuner runs: reference code for a missing
    kernel (model/kernels.py), a checkpoint's own quantization (model/checkpoint_quant.py)."""
    from ..model import kernels

    lines = []
    fallbacks = kernels.note(get(record, "info.model.reference_kernels") or [])
    if fallbacks:
        lines.append(f"NOTE: {fallbacks}")
    for line in get(record, "info.cpu_kernels") or []:
        lines.append(f"NOTE: traced with CPU kernels, a CUDA step differs: {line}")
    stored = get(record, "info.model.checkpoint_quantization")
    if isinstance(stored, dict):
        lines.append(f"NOTE: {stored.get('note')}")
    return lines


SHARDED_CLOSED_FORMS = {MEMORY.weights: PREDICTED_SHARDED.weights, MEMORY.grads: PREDICTED_SHARDED.grads,
                         MEMORY.optimizer: PREDICTED_SHARDED.optimizer}


def _closed_forms(record: dict[str, Any]) -> str:
    """Traced figures beside their closed forms; a sharded cell's weights, gradients and
    optimizer state are rank 0's, so they are held against ``predicted.sharded`` (rank 0's closed
    forms), not the whole model's."""
    rows = []
    sharded = get(record, PREDICTED_SHARDED.weights) is not None
    paged = (("paged optimizer state", MEMORY.optimizer_paged, PREDICTED_MEMORY.optimizer_paged, fmt_bytes),)
    for name, traced_path, closed_path, fmt in CLOSED_FORMS + (paged if get(record, MEMORY.optimizer_paged) else ()):
        if sharded and traced_path in SHARDED_CLOSED_FORMS:
            name, closed_path = f"{name} (rank 0)", SHARDED_CLOSED_FORMS[traced_path]
        traced, closed = get(record, traced_path), get(record, closed_path)
        agree = "" if traced is None or closed is None else ("equal" if traced == closed else
                                                             f"differ by {fmt(traced - closed)}")
        rows.append([name, fmt(traced), fmt(closed), agree])
    return "traced vs closed form (lamda_bench/analytic):\n" + tabulate(
        rows, headers=["", "traced", "closed form", ""], disable_numparse=True)


def _share(part: Any, whole: Any) -> str:
    return "" if part is None or not whole else f"{100 * part / whole:.1f}%"


def _value(v: Any) -> str:
    if isinstance(v, list):
        return ",".join(map(str, v))
    return str(v).lower() if isinstance(v, bool) else str(v)
