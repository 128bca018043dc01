"""The report's vision-language section: who holds what in an image-text cell.

One row per image-text record (``info.model.vlm`` present): the image layout (images per
sample, pixels, tokens per image by the architecture's rule, text and total tokens), then the
bytes saved for backward, the FLOPs and the parameter bytes of the vision tower, the projector,
the language model and the adapter (``info.vlm_owners``, from ``lamda_bench.model.vlm_parts``),
and the vision tower's share of the peak (its weights plus what it saved, over ``memory.peak``).
"""

from __future__ import annotations

from typing import Any

from ..results.record import MEMORY
from .escape import md
from .records import get, method_label, mode
from .units import fmt_bytes, fmt_flops

PARTS = (("vision", "vision"), ("projector", "projector"), ("language_model", "LM"), ("adapter", "adapter"))


def vision_share(record: dict[str, Any]) -> float | None:
    """(vision weights + vision saved activations) / peak; None where a figure is missing."""
    owners = get(record, "info.vlm_owners") or {}
    peak = get(record, MEMORY.peak)
    weights, saved = (owners.get("param_bytes") or {}).get("vision"), (owners.get("saved_bytes") or {}).get("vision")
    if not peak or weights is None or saved is None:
        return None
    return (weights + saved) / peak


def _tokens(v: dict[str, Any]) -> str:
    """Tokens per image in the sequence; Mllama's cross-attended vision tokens beside them."""
    cross = v.get("cross_attention_tokens_per_image")
    return f"{v['tokens_per_image']} (+{cross:,} cross-attended)" if cross else str(v["tokens_per_image"])


def owners_section(records: list[dict[str, Any]]) -> list[str]:
    """Markdown lines of the section ([] when no record is image-text)."""
    vlm = [r for r in records if get(r, "info.model.vlm")]
    if not vlm:
        return []
    head = ["cell", "method", "targets", "ckpt", "images x px", "tokens/image", "text + image tokens", "peak"]
    head += [f"saved {label}" for _, label in PARTS] + [f"FLOPs {label}" for _, label in PARTS]
    head += ["vision share of peak"]
    rows = []
    for r in vlm:
        v = get(r, "info.model.vlm")
        owners = get(r, "info.vlm_owners") or {}
        targets = get(r, "cell.targets")
        share = vision_share(r)
        row = [f"{get(r, 'cell.workload')} ({mode(r)})", method_label(r),
               "+".join(targets) if isinstance(targets, list) else targets,
               "yes" if get(r, "cell.gradient_checkpointing") else "no",
               f"{v['images_per_sample']} x {v['image_size']}", _tokens(v),
               f"{v['text_tokens']} + {v['image_tokens']}", fmt_bytes(get(r, MEMORY.peak))]
        row += [fmt_bytes((owners.get("saved_bytes") or {}).get(k)) for k, _ in PARTS]
        row += [fmt_flops((owners.get("flops") or {}).get(k)) for k, _ in PARTS]
        row += [f"{share:.1%}" if share is not None else "n/a"]
        rows.append(row)
    lines = ["## Vision-language cells: who holds what", "",
             "Per image-text cell: images per sample and their pixels, tokens per image by the architecture's rule, "
             "text and image tokens per sample (`seq` counts text tokens only), then bytes saved for backward by the "
             "forward and FLOPs (forward + backward) of the vision tower, the projector, the language model (LM) and "
             "the adapter (`info.vlm_owners`); the vision share of the peak is the tower's weights plus what it saved, "
             "over `memory.peak`. A frozen tower whose input needs no gradient saves nothing.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(md(str(c)) for c in row) + " |" for row in rows]
    return lines + [""]
