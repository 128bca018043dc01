"""Certified depth extrapolation of an estimate (docs/extrapolation.md): trace the step at a
few probe depths and give the target depth's record, or trace every block and say why.

An estimate traces each decoder block through fake-tensor dispatch; the blocks of a uniform
stack repeat, so the record at depth ``L`` is affine in ``L`` field by field, and a peak is
the largest of events that are each affine in depth and in the block visited. ``extrapolate.py``
checks both from the probes, to the byte, per answer; whatever it cannot certify falls back to
the full trace. ``trace = "full"`` (``--trace full``) forces the full trace; it is not part of
a cell's id, because both give the same bytes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from torch import nn

from ..errors import UserError, one_line
from ..model import workloads
from .assemble import blank_record, fill_record, write_timeline
from .extrapolate import NotCertified, StepAtDepth, step_at, timeline_at, tree
from .resolve import Plan
from .result import StepResult

PROBE_DEPTHS = (3, 4, 5)  # a first block, a last, and 1-3 between them: six middle visits per event
MIN_DEPTH = 16  # extrapolate from here: the probes trace 12 blocks and pay a model build each
# Maxima over the step's events: from the event logs (extrapolate.step_at), never fitted as fields.
EVENT_MEMORY = ("peak_forward", "peak_backward", "peak_step", "peak", "at_peak", "peak_steady",
                "autocast_weight_copies", "autocast_weight_copies_at_peak", "per_rank")
PHASE_FIELDS = {"peak_forward": "forward", "peak_backward": "backward", "peak_step": "optimizer"}
# Config keys that make some blocks unlike the others (a dense prefix before MoE blocks...).
UNLIKE_KEYS = ("first_k_dense_replace", "mlp_only_layers", "moe_layer_freq", "decoder_sparse_step",
               "sliding_window_pattern", "layers_block_type")
FULL_TRACE_NOTE = ("the timeline is extrapolated like the peak; the per-module detail file comes with "
                   "trace = 'full' only")


def trace_info(mode: str, reason: str, probes=()) -> dict:
    return {"mode": mode, "probe_depths": list(probes), "reason": reason}


def why_full(plan: Plan) -> str | None:
    """Why this estimate is traced in full before any probe runs, or None to try the probes."""
    c = plan.cell
    if c.trace == "full":
        return "trace = 'full' asked for"
    workload = workloads.get_workload(c.workload)
    if workload.task == "linear":
        return "the linear workload has no block stack to extrapolate"
    if workload.task == "seq2seq":
        return "encoder-decoder models have two block stacks; only one stack is extrapolated"
    if workload.pretrained:
        return "a pretrained workload is traced in full (its real weights stop at their own depth)"
    depth = workload.default_layers if c.layers is None else c.layers
    if depth < MIN_DEPTH:
        return (f"depth {depth} is below {MIN_DEPTH}: probes at depths {list(PROBE_DEPTHS)} would cost about "
                "as much as the full trace")
    if c.method == "full" and c.objective in ("dpo", "kto") and not c.precompute_ref_log_probs:
        return (f"objective {c.objective!r} with full fine-tuning keeps a frozen reference copy: two block "
                "stacks in the model; only one stack is extrapolated")
    if c.method == "lamda++":
        return "LaMDA++ gives each layer its own rank: the blocks differ"
    config = workloads.hf_config(c.workload, depth).to_dict()
    for key, value in config.items():
        if isinstance(value, list) and len(value) == depth and len({repr(v) for v in value}) > 1:
            return f"config {key} differs between layers: the blocks are unlike"
    for key in UNLIKE_KEYS:
        if config.get(key) not in (None, 0, 1, [], False):
            return f"config {key} = {config[key]!r}: the blocks are unlike"
    return None


def unlike_blocks(model: nn.Module, prefix: str) -> str | None:
    """Where the built blocks differ (parameters, buffers, module classes), or None."""
    def signature(block: nn.Module) -> tuple:
        return (tuple((n, tuple(p.shape), p.dtype, p.requires_grad) for n, p in block.named_parameters()),
                tuple((n, tuple(b.shape), b.dtype) for n, b in block.named_buffers()),
                tuple((n, type(m).__name__) for n, m in block.named_modules()))

    sigs = [signature(b) for b in model.get_submodule(prefix)]
    for k, s in enumerate(sigs[1:], 1):
        if s != sigs[0]:
            return f"block {k} differs from block 0 after the method is applied"
    return None


def probe(plan: Plan, depth: int, device: str) -> tuple[dict, StepResult]:
    """The record and run of the cell at ``depth``, with each tracked step's event log."""
    from .step import estimate

    cell = dataclasses.replace(plan.cell, layers=depth)
    p = dataclasses.replace(plan, cell=cell, requested=dataclasses.replace(plan.requested, layers=depth))
    try:
        res = estimate(p, device, probe=True)
    except UserError as e:  # a model refused at the probe's depth (Mllama below its first
        # cross-attention layer) is traced at its own depth, where it may be fine
        raise NotCertified(f"depth {depth}: {one_line(e)}") from e
    why = unlike_blocks(res.applied.model, res.blocks_prefix)
    if why is not None:
        raise NotCertified(f"depth {depth}: {why}")
    for step, log in res.event_logs.items():
        why = log.self_check()
        if why is not None:
            raise NotCertified(f"depth {depth}, step {step}: {why}")
    record = blank_record(p.requested.to_dict())
    fill_record(record, p, res, "estimate", device, None)
    return record, res


def extrapolated(plan: Plan, device: str) -> tuple[dict, list[dict] | None]:
    """The target depth's record blocks (params ... env) and, when the plan keeps one, its
    module-boundary timeline, from the probes; or NotCertified."""
    from ..measure.live import Peak
    from .peaks import run_peak_fields

    c = plan.cell
    target = workloads.get_workload(c.workload).default_layers if c.layers is None else c.layers
    depths = list(PROBE_DEPTHS)
    runs = [probe(plan, d, device) for d in depths]
    records = [r for r, _ in runs]
    steps = sorted(runs[0][1].event_logs)
    if any(sorted(res.event_logs) != steps for _, res in runs):
        raise NotCertified("the tracked steps differ between probe depths")
    at: dict[int, StepAtDepth] = {
        s: step_at({d: res.event_logs[s] for d, (_, res) in zip(depths, runs)}, target, f"step {s}")
        for s in steps}

    def without(block: str, keys) -> list:
        return [{k: v for k, v in r[block].items() if k not in keys} for r in records]

    out = {b: tree([r[b] for r in records], depths, target, b) for b in ("params", "flops", "time", "predicted", "env")}
    memory = tree(without("memory", EVENT_MEMORY), depths, target, "memory")
    series = tree(without("series", ("peak",)), depths, target, "series")
    probe_infos = without("info", ("peak_steps", "model"))
    not_adapted = [i.get("method", {}).pop("not_adapted", None) for i in probe_infos]  # a text: carried, not fitted
    info = tree(probe_infos, depths, target, "info")

    res = runs[-1][1]
    instrumented = res.instrumented_step
    peaks = {s: Peak(a.live_bytes, a.by_category, 0) for s, a in at.items()}
    run_peak, info["peak_steps"] = run_peak_fields(peaks, instrumented, res.applied.trainable_shrinks,
                                                   res.untracked_peak_steps)
    inst = at[instrumented]
    derived = dict(run_peak)
    for key, phase in PHASE_FIELDS.items():
        derived[key] = inst.phase_peaks.get(phase)
    derived["autocast_weight_copies"] = inst.copies_peak
    derived["autocast_weight_copies_at_peak"] = inst.copies_at_peak
    if "per_rank" in records[-1]["memory"]:  # a sharded cell: rank 0's breakdowns (parallel.rank_memory)
        derived["per_rank"] = rank_memory(inst, records[-1]["memory"]["per_rank"])
    out["memory"] = {k: (derived[k] if k in EVENT_MEMORY else memory[k]) for k in records[-1]["memory"]}
    pattern = [[v is None for v in r["series"]["peak"]] for r in records]
    if any(p != pattern[0] for p in pattern):
        raise NotCertified("series.peak: the tracked steps differ between probe depths")
    series["peak"] = [None if v is None else at[s].live_bytes
                      for s, v in zip(records[-1]["series"]["step"], records[-1]["series"]["peak"])]
    out["series"] = {k: series[k] for k in records[-1]["series"]}
    target_model = workloads.build_model(c, "meta")  # what the record says about the model, at the target depth
    info["model"] = workloads.model_info(c, target_model)
    if any(n is not None for n in not_adapted):
        from ..methods import peft_experts

        info["method"]["not_adapted"] = peft_experts.coverage(target_model, c.method, [])["not_adapted"]
    out["info"] = {k: info[k] for k in records[-1]["info"]}
    if c.card is not None:  # the allocator replayed over the stream laid out at the target depth; the time model
        card_at_depth(out, plan, {d: r.alloc_log for d, (_, r) in zip(depths, runs)}, target)
        time_at_depth(out, plan, {d: r for d, (_, r) in zip(depths, runs)}, target)
    timeline = None
    if plan.timeline:
        timeline = timeline_at({d: r.live.timeline for d, (_, r) in zip(depths, runs)},
                               res.event_logs[instrumented].block_span, target, "timeline")
    return out, timeline


def card_at_depth(out: dict, plan: Plan, logs: dict, target: int) -> None:
    """memory.reserved_peak and device_peak (info.allocator) at the target depth: the allocator
    model replayed over the allocation stream laid out from the probes (``card/render.py``, certified
    there), with the card's capacity, exactly as a full trace's replay."""
    from ..card.render import render
    from .assemble import card_answer

    answer = card_answer(plan.cell, render(logs, target), probe=False)
    answer.info["stream"] = (f"laid out at depth {target} from the depth probes' tagged allocation logs "
                             "(card/render.py), checked at a probe depth to the event")
    out["memory"].update(answer.memory_fields())
    out["info"]["allocator"] = answer.info


def time_at_depth(out: dict, plan: Plan, runs: dict, target: int) -> None:
    """time.step_s_predicted at the target depth: each part of the time model is a sum over ops, so
    affine in depth; fitted on two probes and checked on the third (``card/step_time.py``)."""
    from ..card.step_time import NotAffine, extrapolate_time
    from .assemble import predict_on_card, time_on_card

    try:
        prediction = extrapolate_time({d: predict_on_card(plan.cell, r) for d, r in runs.items()}, target)
    except NotAffine as e:  # no time rather than a guess; the memory answer stands (it is certified apart)
        out["time"].update(step_s_predicted=None, tokens_per_s_predicted=None)
        out["info"]["time_model"] = {"not_predicted": f"the probes' predictions do not extrapolate: {e}; "
                                                      "trace = 'full' gives one"}
        return
    fields, out["info"]["time_model"] = time_on_card(plan.cell, prediction)
    out["time"].update(fields)


def rank_memory(inst: StepAtDepth, probe: dict) -> dict:
    """``memory.per_rank`` at the target depth (``parallel.rank_memory``'s fields: the
    instrumented step's peak and phase peaks, each with its breakdown), in the probe's key order."""
    return {"rank": probe["rank"], "at_peak": inst.by_category,
            "phase_peaks": {name: {"live_bytes": inst.phase_peaks[name], "by_category": inst.phase_breakdowns[name]}
                            for name in probe["phase_peaks"]}}


def estimate_traced(plan: Plan, device: str, artifacts_dir: str | None):
    """(StepResult, None, trace) for a full trace, or (None, record blocks, trace) when the
    extrapolation is certified."""
    from .step import estimate

    why = why_full(plan)
    if why is None:
        try:
            blocks, timeline = extrapolated(plan, device)
        except NotCertified as e:
            why = f"not certified, traced in full: {e}"
        else:
            trace = trace_info("extrapolated", "uniform blocks: every field affine in depth and every live-bytes "
                               "event affine in depth and block, checked on each probe to the byte", PROBE_DEPTHS)
            if artifacts_dir:
                trace["side_files"] = FULL_TRACE_NOTE
                blocks["artifacts"] = {"timeline": write_timeline(Path(artifacts_dir), plan.requested.id, timeline)}
            return None, blocks, trace
    return estimate(plan, device), None, trace_info("full", why)
