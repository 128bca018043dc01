"""Claim 2v, the LaMDA paper's open question: does LaMDA's r-dimensional activation saving hold
on a vision-language model's language model, and what share of the peak does the vision tower hold?

Evidence: LoRA / LaMDA pairs of image-text records (``info.model.vlm``) at the same cell, from
``suites/claims.toml`` (and ``suites/vlm.toml``). The saving is judged as claim 2b judges it on
text models: the share of LoRA's adapter-saved bytes that LaMDA removes, plus LaMDA's adapter
bytes against its closed form (``predicted``); the vision share is the tower's weights plus
what it saved, over the peak (``report.owners.vision_share``).
"""

from __future__ import annotations

from ..model.vlm_parts import VLM_PRESETS
from ..report.owners import vision_share
from ..report.records import get
from ..report.units import fmt_bytes
from ..results.record import CELL, MEMORY, PREDICTED_MEMORY
from .common import HOLDS, LAMDA_SOURCE, NOT, PARTLY, REMOVED_SHARE_HOLDS, ClaimRow, cannot, lora_lamda_pairs, pct, \
    setting_label, table

KEY, CLAIM = "2v", "LaMDA's r-dimensional activation saving holds on a VLM's language model (paper: untested next step)"


def _is_vlm(record: dict) -> bool:
    """An image-text record adapting the language model only (the tower and projector frozen)."""
    return bool(get(record, "info.model.vlm")) and get(record, CELL.targets) not in VLM_PRESETS


def claim_vlm_activations(records: list[dict]) -> ClaimRow:
    rows, shares, exact, vision = [], [], [], []
    for lora, lamda in lora_lamda_pairs([r for r in records if _is_vlm(r)]):
        if get(lora, CELL.gradient_checkpointing):
            continue
        lt, la = get(lora, MEMORY.saved_activations), get(lora, MEMORY.saved_activations_adapter)
        mt, ma = get(lamda, MEMORY.saved_activations), get(lamda, MEMORY.saved_activations_adapter)
        if None in (lt, la, mt, ma) or not la:
            continue
        pa = get(lamda, PREDICTED_MEMORY.saved_activations_adapter)
        share = (lt - mt) / la
        shares.append((share, lamda))
        exact.append(pa is not None and pa == ma)
        v = get(lamda, "info.model.vlm")
        vs = [vision_share(lora), vision_share(lamda)]
        vision += [s for s in vs if s is not None]
        rows.append([setting_label(lamda), f"{v['images_per_sample']} x {v['image_size']} "
                     f"({v['tokens_per_image']} tok/img)", fmt_bytes(lt), fmt_bytes(la), fmt_bytes(mt), fmt_bytes(ma),
                     fmt_bytes(pa) if pa is not None else "n/a", pct(share),
                     " / ".join(pct(s) if s is not None else "n/a" for s in vs)])
    if not rows:
        return cannot(KEY, CLAIM, LAMDA_SOURCE, "no LoRA/LaMDA pair of image-text records without checkpointing "
                      "(suites/claims.toml's VLM sweep)")
    low, low_rec = min(shares, key=lambda s: s[0])
    high = max(s for s, _ in shares)
    vision_text = f"vision tower {pct(min(vision))}..{pct(max(vision))} of the peak" if vision else "vision share n/a"
    if low >= REMOVED_SHARE_HOLDS and all(exact):
        verdict = HOLDS
        reason = (f"on the language model of a VLM LaMDA removes {pct(low)}..{pct(high)} of LoRA's adapter-saved bytes, "
                  f"its own adapter bytes equal the r-wide closed form; {vision_text} (frozen tower)")
    elif high > 0:
        verdict = PARTLY
        reason = (f"LaMDA removes {pct(low)} of LoRA's adapter bytes at {setting_label(low_rec)} (up to {pct(high)}); "
                  f"{exact.count(False)} of {len(exact)} LaMDA records differ from the closed form; {vision_text}")
    else:
        verdict, reason = NOT, f"LaMDA's saved activations are not below LoRA's on the VLM; {vision_text}"
    details = [
        "LoRA / LaMDA on the language model's linears (vision tower and projector frozen, PEFT's VLM recipe). "
        "Removed share = (LoRA total - LaMDA total) / LoRA adapter bytes, as in claim 2b; vision share = "
        "(vision weights + vision saved bytes) / peak, LoRA / LaMDA.", "",
        *table(["setting", "images", "LoRA saved", "LoRA adapter", "LaMDA saved", "LaMDA adapter",
                "LaMDA adapter predicted", "removed share", "vision share of peak"], rows)]
    return ClaimRow(KEY, CLAIM, LAMDA_SOURCE, f"{len(rows)} VLM LoRA/LaMDA pairs, e.g. {rows[0][0]}",
                    "all of LoRA's d-wide adapter bytes removed (text models: claim 2b)",
                    f"removed {pct(low)}..{pct(high)}; {vision_text}", verdict, reason, details)
