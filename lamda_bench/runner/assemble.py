"""The record: a blank one for every cell (failed cells too), then filled from a run's
``StepResult`` (params, memory, FLOPs, time, series), with the closed forms beside it
(``predicted``), how the cell ran (``info``), the environment (``env``) and the side files
(``artifacts``). ``claims/probes.py`` builds its records from ``blank_record`` too."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from .. import analytic
from ..model import kbit
from ..model import parallel
from ..model import precision
from ..model import quant
from ..model import moe
from ..model import workloads
from ..suite.cell import Cell
from .observe import adapter_itemsize
from .resolve import Plan
from .result import StepResult


def blank_record(cell: dict) -> dict:
    from ..results.record import SCHEMA_VERSION, blank_blocks

    return {
        "schema": SCHEMA_VERSION,
        "id": cell_id(cell),
        "suite": None,
        "status": "error",
        "error": None,
        "cell": dict(cell) if isinstance(cell, dict) else {"value": repr(cell)},
        **blank_blocks(),  # params, memory, flops, time, series: all null
        "predicted": None,
        "info": {},
        "artifacts": {},
        "env": None,
        "wall_s": None,
        "started_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def failed_cell_env() -> dict | None:
    """The software environment for a record that failed before its device was known."""
    from ..results.files import environment

    try:
        return environment()
    except Exception:  # noqa: BLE001 - a failed record must still come back
        return None


def cell_id(cell: Any) -> str | None:
    try:
        return Cell.from_dict(cell).id
    except Exception:  # noqa: BLE001 - an invalid cell still gets a record
        return None




def card_answer(c, alloc_log, probe: bool = False):
    """The cell's card memory (``card/memory.py``): the allocator model over the whole run of the
    instrumented step's allocation log, memory.reserved_peak and device_peak, info.allocator."""
    from ..card.memory import card_memory

    return card_memory(alloc_log, c.card, c.allocator, c.warmup + 1 + c.steps,
                       linalg_at_init=linalg_at_init(c), capacity=not probe)


def predict_on_card(c, res: StepResult) -> dict:
    """The time model's prediction for the instrumented step's ops on the cell's card."""
    from ..card.step_time import predict_step_time

    return predict_step_time(res.op_recorder.ops(), c.card)


def time_on_card(c, prediction: dict) -> tuple[dict, dict]:
    """(time.step_s_predicted and tokens_per_s_predicted, info.time_model): a prediction, in fields
    of its own, never mixed with a measured step time; info.time_model holds its parts, what is not
    modelled and the error band measured out of sample (docs/step-time.md)."""
    from ..card.validation import error_band

    step = prediction["step_s"]
    fields = {"step_s_predicted": step, "tokens_per_s_predicted": c.batch * c.seq / step if step > 0 else None}
    return fields, {**prediction, "error_band": error_band()}


def linalg_at_init(c) -> bool:
    """Whether the method's init runs an SVD on the device (LaMDA's and PiSSA's SVD inits): the
    card then loads cuSOLVER, which its context shows (card/cards.py)."""
    if c.method in ("lamda", "lamda++"):
        return c.option("init", "svd") != "lora"
    return c.method == "pissa"


def fill_record(record: dict, plan: Plan, res: StepResult, mode: str, device: str, artifacts_dir: str | None) -> None:
    c = plan.cell
    applied, live, saved, flops = res.applied, res.live, res.saved, res.flops
    series = res.series
    record["params"] = {
        "total": applied.num_total(),
        "trainable": series["trainable"][0],
        "updates": sum(series["trainable"]),
    }
    from .peaks import run_peak_fields

    peaks = live.phase_peaks
    run_peak, res.info["peak_steps"] = run_peak_fields(res.step_peaks, res.instrumented_step,
                                                       applied.trainable_shrinks, res.untracked_peak_steps)
    record["memory"] = {
        "weights": res.weights_bytes,
        "trainable_weights": live.trainable_weights,
        "grads": res.grads_bytes,
        "optimizer": series["optimizer"][series["step"].index(res.instrumented_step)],
        "saved_activations": saved.total_bytes,
        "saved_activations_adapter": saved.adapter_bytes,
        "peak_forward": peaks["forward"].live_bytes if "forward" in peaks else None,
        "peak_backward": peaks["backward"].live_bytes if "backward" in peaks else None,
        "peak_step": peaks["optimizer"].live_bytes if "optimizer" in peaks else None,
        **run_peak,  # peak and at_peak over the run's steps, peak_steady the instrumented step's
        "cuda_max_allocated": res.device_memory.get("cuda_max_allocated"),
        "cuda_max_reserved": res.device_memory.get("cuda_max_reserved"),
        "cuda_max_active": res.device_memory.get("cuda_max_active"),
        "nvml_used": res.device_memory.get("nvml_used"),
        "host_rss_peak": res.device_memory.get("host_rss_peak"),
    }
    if c.card is not None and res.event_logs is None:  # the card (lamda_bench/card); probes: depth.py
        answer = card_answer(c, res.alloc_log)
        res.info["allocator"] = answer.info
        record["memory"].update(answer.memory_fields())
    if c.optimizer not in ("adamw", "sgd"):  # issue 25's optimizers: the paged state said apart (0: none)
        record["memory"]["optimizer_paged"] = res.optimizer_paged
    if c.offload_activations:  # host memory the offloaded saved tensors took (never in the device peak)
        record["memory"]["host_offloaded_peak"] = live.host_peak
    if parallel.is_parallel(c):
        record["memory"].update(parallel.rank_memory(live))
    if saved.discarded_bytes:  # graphs dropped in forward (DoRA's weight-norm path): saved, never kept
        record["memory"]["saved_discarded"] = saved.discarded_bytes
        record["memory"]["saved_discarded_adapter"] = saved.discarded_adapter_bytes
    if c.gradient_checkpointing:
        record["memory"]["saved_recomputed"] = saved.recomputed_bytes
        record["memory"]["saved_recomputed_adapter"] = saved.recomputed_adapter_bytes
    if res.precision.policy.autocast_dtype is not None:  # autocast's weight casts: temporaries, said apart
        record["memory"].update(autocast_weight_copies=live.weight_copies_peak,
                                autocast_weight_copies_at_peak=live.weight_copies_at_peak,
                                saved_autocast_weight_copies=saved.weight_copy_bytes)
    from ..measure import ATTENTION_COUNTING

    record["flops"] = {
        "forward": flops.forward,
        "backward": flops.backward,
        "adapter_forward": flops.adapter_forward,
        "adapter_backward": flops.adapter_backward,
        "attention_counting": ATTENTION_COUNTING,
    }
    if moe.experts_modules(applied.model):  # MoE: the experts' share, and how grouped matmuls count
        from ..measure.flops import GROUPED_COUNTING

        experts = moe.experts_flops(flops.by_module, applied.model)
        record["flops"].update(experts_forward=experts.get("forward", 0), experts_backward=experts.get("backward", 0),
                               grouped_counting=GROUPED_COUNTING)
    tokens = c.batch * c.seq
    t = res.timing
    record["time"] = {
        "step_median_s": t.median_s if t else None,
        "step_min_s": t.min_s if t else None,
        "step_max_s": t.max_s if t else None,
        "steps_timed": len(t.times_s) if t else 0,
        "tokens_per_s": tokens / t.median_s if t and t.median_s > 0 else None,
    }
    if c.card is not None and res.event_logs is None:  # predicted on the card (card/step_time.py); probes: depth.py
        fields, res.info["time_model"] = time_on_card(c, predict_on_card(c, res))
        record["time"].update(fields)
    record["series"] = series
    record["predicted"] = predicted(plan, res)
    if parallel.is_parallel(c) and isinstance(record["predicted"], dict):
        record["predicted"]["sharded"] = res.sharded_prediction
    record["info"] = info(c, res)
    if mode == "estimate":  # where the CPU kernels traced here save other tensors than CUDA's
        from ..measure import cuda_kernels

        differs = cuda_kernels.statement(record["info"], device)
        if differs:
            record["info"]["cpu_kernels"] = differs
    record["env"] = env(device, mode, applied)
    if artifacts_dir:
        record["artifacts"] = write_artifacts(Path(artifacts_dir), record["id"], res)
        if res.snapshot:
            record["artifacts"]["cuda_snapshot"] = res.snapshot


def predicted(plan: Plan, res: StepResult) -> dict:
    c = plan.cell
    applied = res.applied
    method = c.method
    info = applied.info
    from ..methods import get_method

    if isinstance(info.get("expert_targets"), list):  # MoE experts adapted (methods/peft_experts.py)
        return {"error": "closed forms cover adapted nn.Linear calls only; the adapted expert parameters "
                         "(PEFT ParamWrapper) are traced, not modelled"}
    b_schedule = get_method(method).b_schedule(info, res.horizon)  # the method's own freezing schedule
    itemsize = adapter_itemsize(applied)
    calls = res.calls
    input_itemsize = calls[0].input_itemsize if calls else plan.dtype.itemsize
    try:
        pred = analytic.predict(
            method, res.layers, c.r, c.batch * c.seq,
            calls=calls,
            steps=len(res.series["step"]),
            accounted_step=res.instrumented_step - 1,
            adapter_itemsize=itemsize or input_itemsize,
            input_itemsize=input_itemsize,
            b_schedule=b_schedule,
            total_params=applied.num_total(),  # read by the full family only
            dropout=float(info.get("dropout", 0.0) or 0.0),
            gradient_checkpointing=c.gradient_checkpointing,
        )
    except analytic.AnalyticError as e:
        return {"error": str(e)}
    pred["memory"].update(precision.predict_state(c, res, b_schedule))
    if res.precision.policy.autocast_dtype is not None:  # autocast's casts in the adapter path: not modelled
        pred["memory"]["saved_activations_adapter"] = None
    pred["assumptions"] = "see lamda_bench/analytic/structure.py; structure (shared inputs, input grads, tokens per call) observed"
    return pred


def loss_info(c: Cell, model) -> dict:
    """What the fused loss modelled: Liger's chunking for this cell's rows, hidden size and vocab."""
    from ..model import fused_ce

    weight = fused_ce.lm_head_weight(model, c.workload)
    vocab, hidden = weight.shape
    logits_dtype = weight.dtype
    if c.precision.startswith("amp-"):  # the chunk's matmul runs under autocast
        logits_dtype = torch.bfloat16 if c.precision == "amp-bf16" else torch.float16
    return fused_ce.describe(c.batch * c.seq, hidden, vocab, logits_dtype.itemsize)


def info(c: Cell, res: StepResult) -> dict:
    applied = res.applied
    info = dict(res.info)
    info["attn_implementation"] = workloads.attention_implementation(applied.model)
    info["model"] = workloads.model_info(c, applied.model)  # config source + hash + shape fields, experts, kernels
    moe_facts = info["model"].get("moe")
    info["attention_kernels"] = sorted(res.flops.attention_ops)
    info["autocast_adapter_dtype"] = applied.info.get("autocast_adapter_dtype")
    info["precision"] = res.precision.policy.to_info()
    info["quant"] = quant.describe(applied.model)  # None for an unquantized base
    if moe_facts is not None and info["quant"]:  # bitsandbytes quantizes nn.Linear only
        info["quant"]["experts_unquantized"] = (f"{moe_facts['expert_parameters']} expert weights (fused 3-D "
                                                "parameters, not nn.Linear) kept in the model dtype")
    info["kbit_prepare"] = kbit.describe(applied.model)  # None unless the cell's kbit_prepare ran
    if c.loss != "model":  # said only when set: every other record stays as it was
        info["loss"] = loss_info(c, applied.model)
    if c.offload_activations:
        info["offload_activations"] = res.offload
    if c.objective != "sft":  # said only when set: every other record stays as it was
        from ..model import objective

        info["objective"] = objective.describe(c, applied.model)
    info["method"] = applied.info
    info["steps"] = {"warmup": c.warmup, "instrumented_step": res.instrumented_step, "timed": c.steps,
                     "total_steps": res.horizon}
    info["tracked_adapted_calls"] = len(res.calls)
    if info["model"].get("vlm") is not None:  # image-text: saved bytes and FLOPs per part (model/vlm_parts.py)
        from ..model.vlm_parts import owner_figures

        info["vlm_owners"] = owner_figures(res.saved.forward_by_module, res.flops.by_module,
                                           applied.is_adapter_module, applied.model)
    return info


def env(device: str, mode: str, applied) -> dict:
    from ..measure import device as devmem
    from ..results.files import environment

    if mode == "estimate":
        name = device_class = f"fake {device} (estimate)"
    elif device == "cuda":
        name = device_class = devmem.device_name(device)
    else:
        name, device_class = _cpu_name(), "cpu"
    return environment(
        device_name=name,
        device_class=device_class,
        driver=devmem.driver_version() if device == "cuda" and mode == "measure" else None,
        cuda=torch.version.cuda,
        autocast_adapter_dtype=applied.info.get("autocast_adapter_dtype"),
        cpu_threads=torch.get_num_threads(),
    )


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def write_artifacts(out: Path, cell_id: str, res: StepResult) -> dict:
    detail = {
        "id": cell_id,
        "saved_by_module": res.saved.by_module,
        "flops_by_module": {k: dict(v) for k, v in res.flops.by_module.items()},
        "flops_by_op": {k: dict(v) for k, v in res.flops.by_op.items()},
        "adapted_calls": [dataclasses.asdict(x) for x in res.calls],
    }
    return {"timeline": write_timeline(out, cell_id, res.live.timeline),
            "detail": write_side_file(out, f"detail/{cell_id}.json", detail)}


def write_timeline(out: Path, cell_id: str, events: list[dict]) -> str:
    return write_side_file(out, f"timelines/{cell_id}.json", {"id": cell_id, "unit": "bytes", "events": events})


def write_side_file(out: Path, rel: str, payload: dict) -> str:
    """Write ``payload`` as JSON at ``out / rel``; returns ``rel``. A temp name of this process
    alone, renamed into place: a reader never sees half a file, and two processes never write
    through one temp file."""
    path = out / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(payload, separators=(",", ":"), default=str))
        os.chmod(tmp, 0o644)  # mkstemp makes it private; side files are ordinary shared files
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return rel
