"""One benchmark cell: a fully resolved, hashable description of one training-step measurement.

A suite expands into cells; the launcher hands each cell (as a plain dict, so it crosses
process boundaries unchanged) to ``lamda_bench.runner.run_cell``; the record it returns
carries the cell back verbatim. The cell id is a hash of the resolved cell, so the same
settings give the same id in every run (that is what resume relies on).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError

DTYPES = ("fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
MODES = ("auto", "measure", "estimate")
from ..optimizers.catalogue import OPTIMIZERS, problem as optimizer_problem  # HF Trainer names (docs/optimizers.md)
ATTENTION = ("auto", "sdpa", "eager")
PRECISIONS = ("pure", "amp-bf16", "amp-fp16", "fp32")  # lamda_bench/model/precision.py says what each means
PARALLEL = ("none", "fsdp2", "ddp")
QUANTS = ("none", "nf4", "nf4-dq", "fp4", "fp4-dq", "int8")  # quantized frozen base: lamda_bench/model/quant.py
EXPERTS = ("auto", "grouped_mm", "batched_mm", "eager")  # MoE experts kernels: lamda_bench/model/moe.py
LOSSES = ("model", "fused_linear_ce")  # the model's own loss, or Liger's fused linear CE (model/fused_ce.py)
OBJECTIVES = ("sft", "dpo", "orpo", "simpo", "kto")  # preference training as TRL runs it (model/objective.py)
TRACES = ("auto", "full")  # an estimate's trace: depth-extrapolated where certified, or every block (docs/extrapolation.md)
# Keys added after cell ids were first recorded: at their default they are left out of the id's
# hash, so every cell written before the key existed keeps its id (resume, baselines).
ID_NEUTRAL_DEFAULTS = {"precision": "pure", "world_size": 1, "parallel": "none", "reshard_after_forward": True,
                       "quant": "none", "experts_implementation": "auto", "output_router_logits": None,
                       "kbit_prepare": False, "images": None, "image_size": None, "vision_layers": None,
                       "card": None, "allocator": "default", "loss": "model", "offload_activations": False,
                       "objective": "sft", "precompute_ref_log_probs": False}
# The integer keys and their least value. ``steps`` (timed steps) may be 0: the instrumented
# step always runs, an estimate times nothing, and the runner's own tests use 0.
MIN_INTS = {"r": 1, "batch": 1, "seq": 1, "layers": 1, "d_in": 1, "d_out": 1, "steps": 0, "warmup": 0, "seed": 0,
            "world_size": 1, "images": 1, "vision_layers": 1}
OPTIONAL_INTS = ("layers", "d_in", "d_out", "images", "vision_layers")  # None: the workload's own
CHOICES = {"device": DEVICES, "mode": MODES, "optimizer": OPTIMIZERS,
           "attn_implementation": ATTENTION, "precision": PRECISIONS, "parallel": PARALLEL,
           "quant": QUANTS, "experts_implementation": EXPERTS,
           "trace": TRACES, "loss": LOSSES, "objective": OBJECTIVES}


class CellError(UserError):
    """A cell that cannot run as given (one-line message)."""


@dataclass(frozen=True)
class Cell:
    """Everything that decides what one cell measures.

    ``targets`` is either a preset name understood by the workload (``"all"``: every
    adaptable linear of a block, ``"attn"``: the attention projections only) or a tuple of
    module-name suffixes (``("q_proj", "v_proj")``). ``options`` holds method-specific keys
    (``init``, ``freeze_fraction``, ...) with the method's defaults already filled in.
    """

    workload: str
    method: str
    r: int = 8
    alpha: float = 16.0
    targets: str | tuple[str, ...] = "all"
    layers: int | None = None  # None: the workload's own depth
    d_in: int | None = None  # linear workload only
    d_out: int | None = None  # linear workload only
    batch: int = 1
    seq: int = 128
    dtype: str = "bf16"
    device: str = "auto"
    mode: str = "auto"
    steps: int = 3  # timed steps
    warmup: int = 1
    optimizer: str = "adamw"
    lr: float = 1e-4
    gradient_checkpointing: bool = False
    attn_implementation: str = "auto"
    seed: int = 0
    world_size: int = 1  # ranks of the data-parallel job; the record is rank 0's
    parallel: str = "none"  # "fsdp2" (fully_shard per block and root) or "ddp"
    reshard_after_forward: bool = True  # fsdp2 only: free the gathered block after its forward
    timeout_s: float = 900.0
    precision: str = "pure"  # precision policy (PRECISIONS)
    quant: str = "none"  # quantized frozen base (QUANTS)
    experts_implementation: str = "auto"  # MoE only: transformers' experts kernel (EXPERTS); auto: its default
    output_router_logits: bool | None = None  # MoE only: router aux (load-balancing) loss; None: the config's
    kbit_prepare: bool = False  # PEFT's prepare_model_for_kbit_training on the quantized base (model/kbit.py)
    images: int | None = None  # image-text workloads: images per sample (None: 1); lamda_bench/model/vlm.py
    image_size: int | str | None = None  # image-text: pixels, one side or "HxW" (None: the tower's own)
    vision_layers: int | None = None  # image-text: the vision tower's depth (None: its own)
    options: tuple[tuple[str, Any], ...] = field(default_factory=tuple)
    trace: str = "auto"  # estimates: "full" traces every block; not in the id (both give the same bytes)
    card: str | None = None  # the card the cell stands for (lamda_bench/card/cards.py): reserved and device peaks
    allocator: str = "default"  # with a card: the caching allocator's settings (PYTORCH_CUDA_ALLOC_CONF syntax)
    loss: str = "model"  # causal LM: "fused_linear_ce" computes it in chunks without the full logits (LOSSES)
    offload_activations: bool = False  # saved tensors copied to host memory in forward (model/offload.py)
    objective: str = "sft"  # causal LM: "dpo", "orpo", "simpo", "kto" run a TRL preference step (OBJECTIVES)
    precompute_ref_log_probs: bool = False  # dpo / kto: reference log-probs read from the batch, no reference forward

    # ---- conversion -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict; ``options`` becomes a dict, ``targets`` a list or string."""
        d = dataclasses.asdict(self)
        d["options"] = dict(self.options)
        if isinstance(self.targets, tuple):
            d["targets"] = list(self.targets)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Cell":
        d = dict(d)
        d.pop("id", None)
        opts = d.pop("options", {}) or {}
        targets = d.get("targets", "all")
        if isinstance(targets, list):
            d["targets"] = tuple(targets)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown cell keys: {', '.join(unknown)}")
        return cls(**d, options=tuple(sorted(dict(opts).items())))

    def validate(self) -> None:
        """The cell rules, one set for the suite parser and the runner: a one-line CellError
        for the first value this cell cannot have. The dtype is checked where it is resolved
        to a torch dtype (``workloads.torch_dtype``, which also takes aliases such as "bfloat16")."""
        found = self.problem()
        if found:
            raise CellError(found[1])

    def problem(self) -> tuple[str, str] | None:
        """(key, one line saying what is wrong with it) for the first bad value, or None."""
        if self.optimizer not in OPTIMIZERS:  # a did-you-mean, or the package it needs
            return "optimizer", optimizer_problem(self.optimizer)
        for key, allowed in CHOICES.items():
            value = getattr(self, key)
            if value not in allowed:
                return key, f"cell {key} {value!r} is not one of {list(allowed)}"
        for key, least in MIN_INTS.items():
            v = getattr(self, key)
            if v is None and key in OPTIONAL_INTS:
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < least:
                return key, f"cell {key} must be an integer >= {least}, got {v!r}"
        if self.output_router_logits is not None and not isinstance(self.output_router_logits, bool):
            return "output_router_logits", f"cell output_router_logits must be true or false, got {self.output_router_logits!r}"
        if not isinstance(self.precompute_ref_log_probs, bool):
            return "precompute_ref_log_probs", ("cell precompute_ref_log_probs must be true or false, "
                                                f"got {self.precompute_ref_log_probs!r}")
        if not isinstance(self.kbit_prepare, bool):
            return "kbit_prepare", f"cell kbit_prepare must be true or false, got {self.kbit_prepare!r}"
        if self.kbit_prepare and self.quant == "none":
            return "kbit_prepare", ("cell kbit_prepare = true needs a quantized base (quant = 'nf4', 'int8', ...): "
                                    "PEFT's prepare_model_for_kbit_training prepares a k-bit model")
        if not isinstance(self.offload_activations, bool):
            return "offload_activations", f"cell offload_activations must be true or false, got {self.offload_activations!r}"
        if self.offload_activations and self.parallel != "none":
            return "offload_activations", (f"cell offload_activations = true with parallel {self.parallel!r} is not "
                                           "modelled (sharded parameters are not filtered out); use parallel = 'none'")
        card = self.card_problem()
        if card:
            return card
        problem = self.parallel_problem()
        return ("world_size", problem) if problem else None

    def card_problem(self) -> tuple[str, str] | None:
        """(key, one line) when card or allocator cannot be read, else None."""
        from ..card.allocator import parse_settings
        from ..card.cards import get_card

        if self.card is not None:
            if not isinstance(self.card, str):
                return "card", f"cell card must be a card name, got {self.card!r}"
            try:
                get_card(self.card, "cell card")
            except UserError as e:
                return "card", str(e)
        if not isinstance(self.allocator, str):
            return "allocator", f"cell allocator must be a settings string, got {self.allocator!r}"
        if self.allocator != "default" and self.card is None:
            return "allocator", (f"cell allocator {self.allocator!r} needs a card: the allocator model runs "
                                 "only for a cell that names one (card = 'H100-80GB', ...)")
        try:
            parse_settings(self.allocator)
        except UserError as e:
            return "allocator", str(e)
        return None

    def parallel_problem(self) -> str | None:
        """One line saying what is wrong with world_size/parallel, or None."""
        ws = self.world_size
        if isinstance(ws, bool) or not isinstance(ws, int) or ws < 1:
            return f"cell world_size must be an integer >= 1, got {ws!r}"
        if self.parallel not in PARALLEL:
            return f"cell parallel {self.parallel!r} is not one of {list(PARALLEL)}"
        if ws > 1 and self.parallel == "none":
            return f"cell world_size {ws} needs parallel = 'fsdp2' or 'ddp' (parallel is 'none')"
        if not isinstance(self.reshard_after_forward, bool):
            return f"cell reshard_after_forward must be true or false, got {self.reshard_after_forward!r}"
        return None

    def option(self, name: str, default: Any = None) -> Any:
        return dict(self.options).get(name, default)

    # ---- identity ---------------------------------------------------------------------
    @property
    def id(self) -> str:
        """Stable id: method-workload-r prefix for humans, hash of the resolved cell for uniqueness.

        ``timeout_s`` is excluded: changing how long we are willing to wait does not change
        what is measured. Keys of ``ID_NEUTRAL_DEFAULTS`` are excluded at their default.
        """
        d = self.to_dict()
        d.pop("timeout_s", None)
        d.pop("trace", None)  # how an estimate is traced, not what it answers (runner/depth.py)
        d["workload"] = workload_identity(self.workload)
        for key, default in ID_NEUTRAL_DEFAULTS.items():
            if d.get(key) == default:
                d.pop(key)
        blob = json.dumps(d, sort_keys=True, separators=(",", ":"), default=str)
        digest = hashlib.sha256(blob.encode()).hexdigest()[:12]
        return f"{workload_label(self.workload)}-{self.method}-r{self.r}-{digest}"


@functools.lru_cache(maxsize=256)
def workload_identity(workload: str) -> str:
    """What a cell id hashes for its workload: a catalogue name or hub id as is; for a config
    file, its content (``config-sha256:...``), so the same config.json gives the same id in any
    checkout or folder, and an edited one a new id."""
    from ..model.config import config_sha256, read_config, ConfigSource

    path = Path(workload)
    if not (path.is_absolute() and path.is_file()):
        return workload
    return "config-sha256:" + config_sha256(read_config(ConfigSource("file", workload, path)))


def workload_label(workload: str) -> str:
    """A workload as a file-name-safe word for ids: a catalogue name as is; for a config path or
    hub id, its folder or file stem (``/x/qwen/config.json`` -> ``qwen``, ``Qwen/Qwen2.5-7B`` -> ``Qwen2.5-7B``)."""
    if "/" not in workload and "\\" not in workload and not workload.endswith(".json"):
        return workload
    parts = [p for p in re.split(r"[/\\]", workload) if p]
    name = parts[-1] if parts else "config"
    if name == "config.json" and len(parts) > 1:
        name = parts[-2]
    elif name.endswith(".json"):
        name = name[: -len(".json")]
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name).strip(".") or "config"
