"""What a cell cannot be, known from the suite and the model's config alone: refused while the
suite is parsed, so bad input is one line and exit 2 with nothing written (docs/cli.md), never
an error record after the cell started.

The checks are the runner's own, called early: the optimizer against the method and layout
(``optimizers.catalogue.method_problem``), a quantized base under full fine-tuning, the image
keys on a text model, and the targets resolved on the model built on the meta device (no
memory; cached per shape), which is where an unknown module name or ``experts`` on a dense model
shows. The sequence length is checked against the config's ``max_position_embeddings``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from .cell import Cell


def problem(cell: Cell, method: Any) -> tuple[str, str] | None:
    """(key, one line) for the first thing this cell cannot be, or None."""
    from ..optimizers.catalogue import method_problem

    found = method_problem(cell.optimizer, getattr(method, "family", ""), cell.parallel)
    if found:
        return "optimizer", found
    if cell.quant != "none" and getattr(method, "name", cell.method) == "full":
        return "quant", (f"quant {cell.quant!r} with method 'full': full fine-tuning trains the base weights, "
                         "which a quantized base stores as integers; use an adapter method or quant = 'none'")
    from ..model.workloads import get_workload, loss_problem

    found = loss_problem(cell)
    if found:
        return ("objective" if cell.objective != "sft" or cell.precompute_ref_log_probs else "loss"), found
    from ..model.objective import method_problem

    found = method_problem(cell, getattr(method, "name", cell.method))
    if found:
        return "objective", found
    if cell.workload == "linear":
        return None

    workload = get_workload(cell.workload)
    positions = (workload.config or {}).get("max_position_embeddings")
    if isinstance(positions, int) and not isinstance(positions, bool) and cell.seq > positions:
        return "seq", (f"seq {cell.seq} is longer than workload {workload.name!r} takes "
                       f"(max_position_embeddings {positions} in its config)")
    targets = cell.targets if isinstance(cell.targets, str) else tuple(cell.targets)
    shape = _shape_of(cell)
    # Two blocks show every module name of a uniform stack; only a problem found there is
    # checked again at full depth (a stack whose later blocks differ, e.g. dense then MoE).
    if shape.layers is None or shape.layers > 2:
        if _model_problem(dataclasses.replace(shape, layers=2), targets) is None:
            return None
    return _model_problem(shape, targets)


def _shape_of(cell: Cell) -> Cell:
    """The cell with every key that does not change the built model's module names at its default."""
    keep = ("workload", "method", "layers", "images", "image_size", "vision_layers", "dtype",
            "experts_implementation", "output_router_logits", "attn_implementation")
    return Cell(**{k: getattr(cell, k) for k in keep}, d_in=cell.d_in, d_out=cell.d_out)


@functools.lru_cache(maxsize=16)
def _model(shape: Cell):
    """The model of ``shape`` on meta (no memory), or the UserError its build raises."""
    from ..errors import UserError
    from ..model import workloads

    try:
        return workloads.build_model(shape, "meta"), None
    except UserError as e:
        return None, e


@functools.lru_cache(maxsize=256)
def _model_problem(shape: Cell, targets: str | tuple[str, ...]) -> tuple[str, str] | None:
    from ..errors import UserError
    from ..methods import peft_experts

    model, error = _model(shape)
    if error is not None:
        key = "images" if "image-text" in str(error) else "workload"
        return key, str(error)
    try:
        peft_experts.split_targets(dataclasses.replace(shape, targets=targets), model)
    except UserError as e:
        return "targets", str(e)
    return None
