"""Which training objective a trainer config runs (LLaMA-Factory's ``stage`` / ``pref_loss``,
axolotl's ``rl``) -> the cell's ``objective`` key (lamda_bench/model/objective.py), or
``[not modelled]`` with the reason: a trainer the harness does not run is never read as SFT.

LLaMA-Factory (src/llamafactory/hparams/finetuning_args.py, train/dpo/trainer.py at ff6d4d1):
``stage`` is pt, sft, rm, ppo, dpo or kto; within stage dpo, ``pref_loss`` (default sigmoid)
picks DPO's sigmoid loss, orpo or simpo (no reference model: ``use_ref_model`` is false for
those), or hinge / ipo / kto_pair. axolotl (utils/schemas/enums.py RLType): ``rl`` is dpo, ipo,
orpo, kto, simpo, grpo, gdpo or ebft; its simpo keeps TRL's CPOConfig cpo_alpha 1.0 (a chosen
NLL term) unless the file sets ``cpo_alpha: 0``.
"""

from __future__ import annotations

from typing import Any

from .common import named
from .fate import Translation

PT = ("pre-training: the next-token loss over every token, the same step as sft (the cell's SFT step "
      "labels every token)")
SFT = "supervised fine-tuning: the next-token loss, the cell's default step"
DPO_LOSSES = {"sigmoid": "dpo", "orpo": "orpo", "simpo": "simpo"}
NOT_MODELLED_STAGES = {
    "rm": "reward-model training (a value head, pairwise loss): not modelled; the estimate is not of this stage",
    "ppo": ("PPO runs generation, a reward model and a value model beside the policy: not modelled; "
            "the estimate is not of this stage"),
}
NOT_MODELLED_RL = {
    "ipo": "IPO: not modelled (objective models dpo's sigmoid loss; IPO's step holds the same tensors but is not checked)",
    "grpo": "GRPO generates completions and scores groups of them: not modelled",
    "gdpo": "GDPO: not modelled", "ebft": "EBFT: not modelled",
}
NO_MEMORY_KEYS = ("pref_beta", "pref_ftx", "simpo_gamma", "dpo_label_smoothing", "kto_chosen_weight",
                  "kto_rejected_weight", "pref_bco_weight", "ld_alpha", "rl_beta", "dpo_use_weighting",
                  "rpo_alpha", "orpo_alpha", "dpo_norm_loss", "kto_desirable_weight", "kto_undesirable_weight")
REFERENCE_KEYS = ("ref_model", "ref_model_adapters", "ref_model_quantization_bit")


def llamafactory_stage(t: Translation, key: str, value: Any, doc: dict[str, Any]) -> None:
    if value == "sft":
        t.map(key, value, SFT, objective="sft")
    elif value == "pt":
        t.map(key, value, PT, objective="sft")
    elif value == "kto":
        t.map(key, value, "KTO as TRL's KTOTrainer runs it (unpaired rows, KL rows, a reference)", objective="kto")
    elif value == "dpo":
        loss = doc.get("pref_loss", "sigmoid")
        if objective := named(DPO_LOSSES, loss):
            t.map(key, value, f"pref_loss {loss!r}: objective {objective!r}", objective=objective)
        else:
            t.not_modelled(key, value, f"stage dpo with pref_loss {loss!r}: not modelled (sigmoid, orpo and simpo "
                                       "are); the estimate is not of this loss")
    else:
        t.not_modelled(key, value, named(NOT_MODELLED_STAGES, value) or f"stage {value!r}: not modelled")


def llamafactory_key(t: Translation, key: str, value: Any, doc: dict[str, Any]) -> bool:
    """The preference keys beside ``stage``; False for any other key."""
    stage = doc.get("stage", "sft")
    if key == "stage":
        llamafactory_stage(t, key, value, doc)
    elif key == "pref_loss":
        t.map(key, value, "read with stage dpo") if stage == "dpo" else t.no_effect(key, value, "stage is not dpo")
    elif key in REFERENCE_KEYS:
        _reference(t, key, value, stage in ("dpo", "kto"))
    elif key in NO_MEMORY_KEYS:
        t.no_effect(key, value, "a loss coefficient: no memory effect")
    else:
        return False
    return True


def axolotl_key(t: Translation, key: str, value: Any, doc: dict[str, Any]) -> bool:
    """axolotl's ``rl`` and the preference keys beside it; False for any other key."""
    rl = doc.get("rl")
    if key == "rl":
        if value in (None, False, ""):
            t.no_effect(key, value, "off: the SFT step")
        elif value in ("dpo", "orpo", "kto"):
            t.map(key, value, f"TRL's {value.upper()} step", objective=value)
        elif value == "simpo" and doc.get("cpo_alpha") in (0, 0.0):
            t.map(key, value, "TRL's CPOTrainer, loss_type simpo, cpo_alpha 0", objective="simpo")
        elif value == "simpo":
            t.partly(key, value, "axolotl leaves TRL's cpo_alpha at 1.0: the chosen NLL term it adds (a cross-"
                                 "entropy over the chosen rows' logits) is not modelled; cpo_alpha: 0 is",
                     objective="simpo")
        else:
            t.not_modelled(key, value, named(NOT_MODELLED_RL, value) or f"rl {value!r}: not modelled")
    elif key == "precompute_ref_log_probs":
        if value and rl in ("dpo", "kto"):
            t.map(key, value, "reference log-probs computed before training: no reference forward",
                  precompute_ref_log_probs=True)
        else:
            t.no_effect(key, value, "off" if not value else f"rl {rl!r} has no reference forward")
    elif key == "cpo_alpha":
        t.map(key, value, "read with rl: simpo") if rl == "simpo" else t.no_effect(key, value, "rl is not simpo")
    elif key in NO_MEMORY_KEYS:
        t.no_effect(key, value, "a loss coefficient: no memory effect")
    else:
        return False
    return True


def _reference(t: Translation, key: str, value: Any, has_reference: bool) -> None:
    if value in (None, "", False) or not has_reference:
        t.no_effect(key, value, "unset" if value in (None, "", False) else "the stage has no reference model")
    else:
        t.not_modelled(key, value, "a separate reference model: not modelled (the estimate's reference is the "
                                   "policy with its adapters disabled, or a frozen copy under full fine-tuning)")
