"""One benchmark cell: a fully resolved, hashable description of one training-step measurement.

A suite expands into cells; the launcher hands each cell (as a plain dict, so it crosses
process boundaries unchanged) to ``lamda_bench.execute.run_cell``; the record it returns
carries the cell back verbatim. The cell id is a hash of the resolved cell, so the same
settings give the same id in every run (that is what resume relies on).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

DTYPES = ("fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
MODES = ("auto", "measure", "estimate")
OPTIMIZERS = ("adamw", "sgd")
ATTENTION = ("auto", "sdpa", "eager")
PARALLEL = ("none", "fsdp2", "ddp")
# Keys added after records existed: left out of the id at their default, so every earlier id stays.
_ID_DEFAULTS = {"world_size": 1, "parallel": "none", "reshard_after_forward": True}


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
    options: tuple[tuple[str, Any], ...] = field(default_factory=tuple)

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
        what is measured. The parallel keys are excluded at their defaults (one device, no
        wrapper), so cells written before they existed keep their ids.
        """
        d = self.to_dict()
        d.pop("timeout_s", None)
        for key, default in _ID_DEFAULTS.items():
            if d.get(key) == default:
                d.pop(key)
        blob = json.dumps(d, sort_keys=True, separators=(",", ":"), default=str)
        digest = hashlib.sha256(blob.encode()).hexdigest()[:12]
        return f"{self.workload}-{self.method}-r{self.r}-{digest}"
