"""Weights, gradients and optimizer state during a step under a precision policy.
"""

from __future__ import annotations

from typing import Callable, Sequence

from .params import adapter_params, trainable, trainable_tensors
from .structure import AdaptedLinear, family


def state_bytes(
    method: str,
    layers: Sequence[AdaptedLinear],
    r: int,
    *,
    total_params: int,
    total_tensors: int,
    buffer_bytes: int,
    base_itemsize: int,
    adapter_itemsize: int,
    trainable_itemsize: int,
    optimizer: str | None,
    step: int,
    optimizer_step: int | None = None,
    b_schedule: Callable[[int, int], int] | None = None,
) -> dict:
    """Weights and gradients during 0-based optimizer step ``step``, optimizer state for the
    trainable set of 0-based step ``optimizer_step`` (default ``step + 1``: after that step and
    the method's ``on_step``, which may freeze LaMDA columns and drop their state; the record's
    ``memory.optimizer`` is read before that freeze, so its closed form passes ``step``). P = ``total_params``,
    T = trainable parameters at the step in question:

    - weights: (P - adapter) x base itemsize + frozen adapter x adapter itemsize + T x trainable
      itemsize + buffers. The itemsizes are the precision policy's: ``pure`` keeps trainable
      parameters as the method built them (adapters in their adapter dtype, full in the model
      dtype), ``amp-*`` and ``fp32`` keep them in fp32 (master weights); frozen base weights are
      in the model dtype (fp32 under ``fp32``). LaMDA's B columns frozen during the run keep
      the trainable itemsize (they were master weights when frozen), those frozen from the
      start the adapter's.
    - grads: T x trainable itemsize (one gradient per trainable parameter, same dtype).
    - optimizer (torch AdamW): 2 T x trainable itemsize (exp_avg, exp_avg_sq) + 4 bytes per
      trainable tensor (its fp32 ``step`` scalar); None for any other optimizer (their closed
      forms are in ``optimizers.py``, applied by ``precision.predict_state``).
    Observed structure: P, the parameter-tensor count of full fine-tuning and the buffer bytes.
    """
    fam = family(method)
    t_now = trainable(method, layers, r, step=step, b_schedule=b_schedule, total_params=total_params)
    if fam == "full":
        weights = total_params * trainable_itemsize + buffer_bytes
        tensors = total_tensors
    else:
        adapter = sum(adapter_params(method, layer, r) for layer in layers)
        late_frozen = 0  # LaMDA's B columns frozen by the schedule after the start: master dtype
        if fam == "lamda" and b_schedule is not None:
            late_frozen = sum(layer.d_out * (b_schedule(layer.rank(r), 0) - b_schedule(layer.rank(r), step))
                              for layer in layers)
        frozen_adapter = adapter - t_now - late_frozen
        weights = ((total_params - adapter) * base_itemsize + frozen_adapter * adapter_itemsize
                   + (t_now + late_frozen) * trainable_itemsize + buffer_bytes)
        tensors = trainable_tensors(method, layers, r, step=step, b_schedule=b_schedule)
    opt = None
    if optimizer == "adamw":
        after = step + 1 if optimizer_step is None else optimizer_step
        t_after = trainable(method, layers, r, step=after, b_schedule=b_schedule, total_params=total_params)
        if fam != "full":
            tensors = trainable_tensors(method, layers, r, step=after, b_schedule=b_schedule)
        opt = 2 * t_after * trainable_itemsize + 4 * tensors
    return {"weights": weights, "grads": t_now * trainable_itemsize, "optimizer": opt}
