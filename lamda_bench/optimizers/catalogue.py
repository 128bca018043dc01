"""The optimizer names a cell takes, spelled as the HF Trainer spells them (``TrainingArguments.optim``),
what each is built from, and the one-line refusals for the names that cannot be built here.

Why the Trainer's spelling: the configs people train with (TRL, axolotl, Unsloth, HF Trainer)
name optimizers this way, and ``optimizers/build.py`` builds them with transformers' own
``Trainer.get_optimizer_cls_and_kwargs``, so class and defaults are what those trainers construct.

``adamw`` is this project's name from before (torch AdamW through the method's own
``make_optimizer``, LoRA-FA's optimizer for LoRA-FA); it stays, unchanged, so every cell id
written with it stays. ``muon`` is not a Trainer name: torch's ``Muon`` for the hidden 2-D
weights and torch's AdamW for the rest, the split of the Muon recipe.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from ..hints import did_you_mean


class OptimizerError(UserError):
    """An optimizer name this cell cannot use (one line)."""


@dataclass(frozen=True)
class Entry:
    """How one name is built and what its state is (``analytic/optimizers.py`` has the bytes)."""

    kind: str  # "adamw" (torch AdamW), "bnb-adamw", "bnb-lion", "adafactor", "sgd", "muon"
    bits: int = 32  # bitsandbytes state bits (8: blockwise-quantized state)
    paged: bool = False  # bitsandbytes paged state (CUDA unified memory)
    hf: bool = True  # built through Trainer.get_optimizer_cls_and_kwargs
    note: str = ""


CATALOGUE: dict[str, Entry] = {
    "adamw": Entry("adamw", hf=False, note="torch AdamW via the method (LoRA-FA: its own optimizer); this "
                                           "project's name from before, kept so cell ids stay"),
    "adamw_torch": Entry("adamw", note="torch.optim.AdamW"),
    "adamw_torch_fused": Entry("adamw", note="torch.optim.AdamW(fused=True)"),
    "adamw_bnb_8bit": Entry("bnb-adamw", bits=8, note="bitsandbytes AdamW, 8-bit blockwise state"),
    "adamw_8bit": Entry("bnb-adamw", bits=8, note="same as adamw_bnb_8bit (the Trainer's alias)"),
    "paged_adamw_8bit": Entry("bnb-adamw", bits=8, paged=True, note="bitsandbytes AdamW, 8-bit state, paged"),
    "paged_adamw_32bit": Entry("bnb-adamw", bits=32, paged=True, note="bitsandbytes AdamW, fp32 state, paged"),
    "lion_8bit": Entry("bnb-lion", bits=8, note="bitsandbytes Lion, 8-bit blockwise state"),
    "lion_32bit": Entry("bnb-lion", bits=32, note="bitsandbytes Lion, fp32 state"),
    "adafactor": Entry("adafactor", note="transformers Adafactor (scale_parameter=False, relative_step=False)"),
    "sgd": Entry("sgd", note="torch.optim.SGD (no momentum: no state)"),
    "muon": Entry("muon", hf=False, note="torch.optim.Muon for hidden 2-D weights, torch AdamW for the rest"),
}
OPTIMIZERS = tuple(CATALOGUE)

# Trainer names that need a package this environment does not have: (package, how to install, in
# transformers' own words). Not in pyproject's extras: none of them is installed or traced here.
MISSING_PACKAGE = {
    "adamw_torch_8bit": ("torchao>=0.4", "pip install torchao"),
    "adamw_torch_4bit": ("torchao>=0.4", "pip install torchao"),
    "galore_adamw": ("galore_torch", "pip install git+https://github.com/jiaweizzhao/GaLore"),
    "galore_adamw_8bit": ("galore_torch", "pip install git+https://github.com/jiaweizzhao/GaLore"),
    "galore_adafactor": ("galore_torch", "pip install git+https://github.com/jiaweizzhao/GaLore"),
    "apollo_adamw": ("apollo_torch", "pip install git+https://github.com/zhuhanqing/APOLLO"),
}

# torch's AdamW under its three names: the state analytic.state_bytes' AdamW rule counts, and
# what fit --advise's 8-bit optimizer lever starts from.
TORCH_ADAMW = ("adamw", "adamw_torch", "adamw_torch_fused")
# The optimizers whose state LaMDA's freezing can slice (every state tensor shaped like its
# parameter, methods/lamda/freeze.py's swap_optimizer_parameter), and those a data-parallel
# cell's closed forms model (analytic/sharded.py).
SLICEABLE = (*TORCH_ADAMW, "sgd")
PARALLEL_OK = ("adamw", "sgd")


def entry(name: str) -> Entry:
    """The catalogue entry, or the one-line refusal for any other name."""
    found = CATALOGUE.get(name)
    if found is None:
        raise OptimizerError(problem(name) or f"optimizer {name!r} is not known")
    return found


def problem(name: object) -> str | None:
    """One line saying why ``name`` is not an optimizer a cell can take, or None."""
    if name in CATALOGUE:
        return None
    if name in MISSING_PACKAGE:
        package, how = MISSING_PACKAGE[name]
        if not installed(package):
            return f"optimizer {name!r} needs the package {package}, which is not installed ({how})"
        return (f"optimizer {name!r}: {package} is installed, but this benchmark does not build or model "
                f"that optimizer yet (known: {', '.join(OPTIMIZERS)})")
    try:
        from transformers.training_args import OptimizerNames

        trainer_names = {o.value for o in OptimizerNames}
    except ImportError:  # pragma: no cover - transformers is a dependency
        trainer_names = set()
    if name in trainer_names:
        return (f"optimizer {name!r} is an HF Trainer name this benchmark does not model "
                f"(known: {', '.join(OPTIMIZERS)})")
    return f"optimizer {name!r} is not known{did_you_mean(name, OPTIMIZERS)}; known: {', '.join(OPTIMIZERS)}"


def installed(package: str) -> bool:
    """Whether the import name of ``package`` ("torchao>=0.4" -> torchao) can be found."""
    import importlib.util
    import re

    return importlib.util.find_spec(re.split(r"[<>=!~ ]", package, maxsplit=1)[0]) is not None


def method_problem(name: str, method_family: str, parallel: str) -> str | None:
    """One line when optimizer ``name`` cannot serve this method or data-parallel layout."""
    if method_family == "lora-fa" and name != "adamw":
        return (f"optimizer {name!r}: the lora-fa method trains with its own optimizer (PEFT's "
                "LoraFAOptimizer); use optimizer 'adamw'")
    if method_family in ("lamda", "lamda++") and name not in SLICEABLE:
        return (f"optimizer {name!r}: LaMDA's freezing slices the optimizer state column by column, "
                f"which only state shaped like its parameter allows ({', '.join(SLICEABLE)})")
    if parallel != "none" and name not in PARALLEL_OK:
        return f"optimizer {name!r}: parallel {parallel!r} cells are modelled with {' or '.join(PARALLEL_OK)} only"
    return None
