"""Optimizers as the HF Trainer names and builds them: the names (``catalogue``), building one
for a model's trainable parameters on real or fake tensors (``build``); their closed-form state
bytes are in ``analytic/optimizers.py``. docs/optimizers.md says what each one keeps."""

from .catalogue import CATALOGUE, OPTIMIZERS, Entry, OptimizerError, entry, method_problem, problem

__all__ = ["CATALOGUE", "OPTIMIZERS", "Entry", "OptimizerError", "entry", "method_problem", "problem"]
