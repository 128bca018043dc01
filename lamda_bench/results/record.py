"""The result record: one JSON object per cell (a line of ``results.jsonl``), its schema version,
its blocks' keys (defined once here) and the paths readers look values up by.

A record stays a plain ``dict`` as ``json`` loads and writes it, described by the ``TypedDict``s
below, rather than a dataclass converted with ``to_dict``/``from_dict``. Why: every committed
results file and the CI baseline depend on the records' exact bytes (key order included); a
plain dict written by the runner is those bytes by construction, where a round trip through
dataclasses would have to restate every block's key order and every optional field of old and
failed records (missing blocks, nulls) to stay identical. Readers also see failed, partial and
older records, which a strict ``from_dict`` would refuse. So the type lives here as keys and
paths: writers build blocks from the key tuples, readers read through ``get(record, PATH)`` with
the paths below (``MEMORY.peak`` is ``"memory.peak"``), so a misspelt path fails at import time
(AttributeError) instead of reading None forever.

The record format is documented in docs/records.md; schema checks on load live in
``lamda_bench.results.files``.
"""

from __future__ import annotations

from typing import Any, Iterable, TypedDict

SCHEMA_VERSION = 1  # every record carries it as "schema"; results.py refuses records of another version

# ---- keys of each block, in the order the runner writes them --------------------------------------

# The live-bytes tracker's categories (measure/live.py): the keys of memory.at_peak and of a
# timeline event's by_category, in plotting order.
CATEGORIES = ("weights", "grads", "optimizer", "activations", "temporaries")
# A sharded cell's two more (parallel.py): a block's all-gathered parameters and the flat
# all-gather / reduce-scatter buffers. They are in memory.per_rank.at_peak (and in memory.peak),
# not in memory.at_peak, whose keys stay CATEGORIES for every record.
SHARDED_CATEGORIES = ("unsharded_weights", "comm_buffers")
PARAMS_KEYS = ("total", "trainable", "updates")
MEMORY_KEYS = (
    "weights", "trainable_weights", "grads", "optimizer", "saved_activations", "saved_activations_adapter",
    "peak_forward", "peak_backward", "peak_step", "peak", "at_peak", "peak_steady",
    "cuda_max_allocated", "cuda_max_reserved", "cuda_max_active", "nvml_used", "host_rss_peak",
)
# Written only where they apply (sharding: parallel.rank_memory; graphs dropped in forward;
# checkpointing; autocast), in this order: read with a default.
MEMORY_OPTIONAL_KEYS = (
    "per_rank", "saved_discarded", "saved_discarded_adapter", "saved_recomputed", "saved_recomputed_adapter",
    "autocast_weight_copies", "autocast_weight_copies_at_peak", "saved_autocast_weight_copies",
    "optimizer_paged",  # any optimizer but adamw/sgd: paged optimizer state (CUDA unified memory), 0 if none
    # a cell with a card (lamda_bench/card): the allocator model's max reserved (BLAS workspaces included),
    # and reserved + the card's context (what nvidia-smi would show at the worst moment); info.allocator
    "reserved_peak", "device_peak",
    # offload_activations (lamda_bench/model/offload.py): the instrumented step's most host bytes held by
    # offloaded saved tensors (outside every device figure above); info.offload_activations
    "host_offloaded_peak",
)
FLOPS_KEYS = ("forward", "backward", "adapter_forward", "adapter_backward", "attention_counting")
# Written for mixture-of-experts models only (lamda_bench/model/moe.py): read with a default.
FLOPS_OPTIONAL_KEYS = ("experts_forward", "experts_backward", "grouped_counting")
TIME_KEYS = ("step_median_s", "step_min_s", "step_max_s", "steps_timed", "tokens_per_s")
# A cell with a card only: the time model's prediction (lamda_bench/card/step_time.py, info.time_model),
# never mixed with the measured fields above.
TIME_OPTIONAL_KEYS = ("step_s_predicted", "tokens_per_s_predicted")
SERIES_KEYS = ("step", "trainable", "optimizer", "backward_flops", "peak", "ran")
PREDICTED_MEMORY_KEYS = ("saved_activations_adapter", "weights", "grads", "optimizer", "optimizer_paged")
PREDICTED_FLOPS_KEYS = ("adapter_forward", "adapter_backward")


class Params(TypedDict):
    total: int | None
    trainable: int | None
    updates: int | None


class Time(TypedDict):
    step_median_s: float | None
    step_min_s: float | None
    step_max_s: float | None
    steps_timed: int
    tokens_per_s: float | None


class Record(TypedDict, total=False):
    """One cell's record. ``memory``, ``flops`` and ``series`` hold the keys above (bytes and
    FLOPs raw); ``predicted`` the closed forms (analytic/) for the same fields, or None;
    ``info`` and ``env`` are open facts (how the value was obtained, the software and device)."""

    schema: int
    id: str | None
    suite: str | None
    status: str  # results.STATUSES
    error: str | None
    cell: dict[str, Any]
    params: Params
    memory: dict[str, Any]
    flops: dict[str, Any]
    time: Time
    series: dict[str, list]
    predicted: dict[str, Any] | None
    info: dict[str, Any]
    artifacts: dict[str, Any]
    env: dict[str, Any] | None
    wall_s: float | None
    started_at: str


# ---- paths --------------------------------------------------------------------------------------


class Block:
    """The dotted paths of one block's keys: ``MEMORY.peak == "memory.peak"``. An unknown key is
    an AttributeError naming the block, so a reader's typo fails loudly."""

    def __init__(self, prefix: str, keys: Iterable[str]):
        self._prefix = prefix
        self.keys = tuple(keys)
        for key in self.keys:
            setattr(self, key, f"{prefix}.{key}")

    def path(self, key: str) -> str:
        """The path of a key chosen at run time (``AT_PEAK.path(category)``); ValueError if unknown."""
        if key not in self.keys:
            raise ValueError(f"{key!r} is not a key of {self._prefix} (keys: {', '.join(self.keys)})")
        return f"{self._prefix}.{key}"

    def __getattr__(self, name: str) -> str:
        raise AttributeError(f"the record block {self._prefix!r} has no key {name!r}")


CELL = Block("cell", (
    "workload", "method", "r", "alpha", "targets", "layers", "d_in", "d_out", "batch", "seq", "dtype", "device",
    "mode", "steps", "warmup", "optimizer", "lr", "gradient_checkpointing", "attn_implementation", "seed",
    "world_size", "parallel", "reshard_after_forward", "timeout_s", "precision", "options",
    "experts_implementation", "output_router_logits", "card", "allocator",
))
# Method options readers look at (cell.options holds every option of the cell's method).
OPTIONS = Block("cell.options", ("freeze_mode", "freeze_fraction", "autocast_adapter_dtype", "dropout"))
PARAMS = Block("params", PARAMS_KEYS)
MEMORY = Block("memory", MEMORY_KEYS + MEMORY_OPTIONAL_KEYS)
AT_PEAK = Block("memory.at_peak", CATEGORIES)
RANK_AT_PEAK = Block("memory.per_rank.at_peak", CATEGORIES + SHARDED_CATEGORIES)  # sharded cells: rank 0's
PREDICTED_SHARDED = Block("predicted.sharded", ("weights", "trainable_weights", "grads", "optimizer",
                                               "largest_block_gathered"))  # sharded cells: rank 0's closed forms
FLOPS = Block("flops", FLOPS_KEYS + FLOPS_OPTIONAL_KEYS)
TIME = Block("time", TIME_KEYS + TIME_OPTIONAL_KEYS)
SERIES = Block("series", SERIES_KEYS)
PREDICTED_PARAMS = Block("predicted.params", ("trainable", "updates"))
PREDICTED_MEMORY = Block("predicted.memory", PREDICTED_MEMORY_KEYS)
PREDICTED_FLOPS = Block("predicted.flops", PREDICTED_FLOPS_KEYS)
INFO = Block("info", ("hidden_size", "estimate_device", "steps", "method", "peak_steps"))
INFO_STEPS = Block("info.steps", ("total_steps",))
INFO_METHOD = Block("info.method", ("adapted_layers", "allocation"))
ENV = Block("env", ("torch", "transformers", "peft", "git_commit", "fingerprint", "device_name"))
ARTIFACTS = Block("artifacts", ("timeline",))
# Probe records (claims/probes.py): timed SVDs and outputs at init.
PROBE = Block("probe", ("kind", "svd", "shape", "scale_of", "seconds", "threads", "load_average_1min", "call",
                        "init", "relative", "max_abs_diff", "max_abs_output", "adapted_layers"))


def get(record: dict[str, Any], dotted: str, default: Any = None) -> Any:
    """``get(rec, AT_PEAK.grads)``; ``default`` where any step of the path is missing or null."""
    node: Any = record
    for key in dotted.split("."):
        if not isinstance(node, dict) or node.get(key) is None:
            return default
        node = node[key]
    return node


def run_mode(record: dict[str, Any], default: Any = None) -> Any:
    """Where the record's figures come from, "measure" or "estimate": ``info.resolved.mode``.
    The cell keeps ``mode`` as asked (``auto``: its id is computed from that); records written
    before the cell stayed as asked carry the resolved mode in the cell."""
    return get(record, "info.resolved.mode") or get(record, "cell.mode", default)


def run_device(record: dict[str, Any], default: Any = None) -> Any:
    """The device the cell ran (or was estimated) for, ``info.resolved.device``; see ``run_mode``."""
    return get(record, "info.resolved.device") or get(record, "cell.device", default)


def blank_blocks() -> dict[str, Any]:
    """The measured blocks of a record before anything is measured (all null, no series)."""
    return {
        "params": dict.fromkeys(PARAMS_KEYS),
        "memory": dict.fromkeys(MEMORY_KEYS),
        "flops": dict.fromkeys(FLOPS_KEYS),
        "time": {**dict.fromkeys(TIME_KEYS), "steps_timed": 0},
        "series": {k: [] for k in SERIES_KEYS},
    }
