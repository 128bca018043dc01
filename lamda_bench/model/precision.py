"""Precision policies: which dtype the weights, gradients and optimizer state are kept in, and
whether forward and backward run under ``torch.autocast``.

A cell's ``precision`` key names one policy:

- ``pure`` (default, what every cell did before the key existed): everything in the cell's
  ``dtype``. Weights, gradients and AdamW moments of full fine-tuning are bf16 for a bf16 cell
  (about 8 bytes per trainable parameter in all); adapters follow their method's own
  ``autocast_adapter_dtype`` option (PEFT's default keeps them in fp32).
- ``amp-bf16`` / ``amp-fp16``: mixed precision as the HF Trainer's ``bf16=True`` / ``fp16=True``
  does it. Every *trainable* parameter is an fp32 master weight (so its gradient and its AdamW
  moments are fp32: 4 + 4 + 8 bytes per parameter); forward runs under
  ``torch.autocast(dtype=bf16 | fp16)``, backward replays the autocast dtypes; ``amp-fp16`` scales
  the loss with a ``GradScaler`` and unscales the gradients before the optimizer step. Frozen
  weights have no master copy: they stay in the cell's ``dtype`` (a bf16 base under amp-bf16 needs
  no cast; an fp32 base is cast per use, and autograd keeps the low-precision copy for backward).
- ``fp32``: the model is built in fp32 whatever the cell's ``dtype``; no autocast.

Autocast's low-precision copies of weights are neither weights nor activations: the live-bytes
tracker counts them as temporaries and reports them apart (``memory.autocast_weight_copies``).
It knows a cast is autocast's by the policy's own region flag (``autocast_enabled``): under
gradient checkpointing, a region recomputed in backward runs outside that flag, so its weight
casts count as plain backward temporaries (and as ``saved_recomputed`` when saved).

On fake tensors (estimate mode) ``GradScaler.step`` cannot run as written (it reads the
found-inf flag with ``.item()``, which has no value on a fake tensor): there the scaler
unscales the gradients with its own kernel and the optimizer steps unconditionally, which
is the memory a step that finds no inf/NaN uses.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

import torch

from ..suite.cell import PRECISIONS
from ..errors import UserError
from ..optimizers.catalogue import TORCH_ADAMW

DEFAULT_PRECISION = "pure"


class PrecisionError(UserError):
    """A precision policy that cannot run as asked (one-line message)."""


@dataclass(frozen=True)
class Policy:
    name: str
    autocast_dtype: torch.dtype | None  # forward under torch.autocast(dtype=...), None: no autocast
    master_dtype: torch.dtype | None  # dtype of every trainable parameter; None: as the method built it
    build_dtype: str | None  # dtype the model is built in; None: the cell's dtype
    grad_scaler: bool
    description: str

    def to_info(self) -> dict:
        return {
            "policy": self.name,
            "autocast_dtype": _name(self.autocast_dtype),
            "master_weights": _name(self.master_dtype),
            "grad_scaler": self.grad_scaler,
            "description": self.description,
        }


_POLICIES = {
    "pure": Policy("pure", None, None, None, False,
                   "weights, gradients and optimizer state in the cell's dtype (adapters per their "
                   "autocast_adapter_dtype option); no autocast"),
    "amp-bf16": Policy("amp-bf16", torch.bfloat16, torch.float32, None, False,
                       "fp32 master weights, gradients and AdamW state for trainable parameters; frozen "
                       "weights in the cell's dtype; forward under torch.autocast(bfloat16)"),
    "amp-fp16": Policy("amp-fp16", torch.float16, torch.float32, None, True,
                       "fp32 master weights, gradients and AdamW state for trainable parameters; frozen "
                       "weights in the cell's dtype; forward under torch.autocast(float16); loss scaled "
                       "by a GradScaler"),
    "fp32": Policy("fp32", None, torch.float32, "fp32", False,
                   "model built in fp32 whatever the cell's dtype: weights, gradients, optimizer state and "
                   "compute in fp32; no autocast"),
}
assert tuple(_POLICIES) == PRECISIONS


def _name(dtype: torch.dtype | None) -> str | None:
    return None if dtype is None else str(dtype).replace("torch.", "")


def get_policy(name: str) -> Policy:
    try:
        return _POLICIES[name]
    except (KeyError, TypeError):
        raise PrecisionError(f"unknown precision {name!r}; known: {', '.join(PRECISIONS)}") from None


def build_dtype(policy: Policy, cell_dtype: str) -> str:
    """The dtype name the model and the inputs are built in."""
    return policy.build_dtype or cell_dtype


def check_supported(policy: Policy, device_type: str) -> None:
    """One line when this torch cannot autocast to the policy's dtype on this device."""
    if policy.autocast_dtype is None:
        return
    if not torch.amp.is_autocast_available(device_type):
        raise PrecisionError(f"precision {policy.name!r}: torch {torch.__version__} has no autocast for "
                             f"device {device_type!r}")
    try:
        with torch.autocast(device_type, dtype=policy.autocast_dtype):
            pass
    except (RuntimeError, ValueError) as e:
        raise PrecisionError(f"precision {policy.name!r} needs autocast to {_name(policy.autocast_dtype)} on "
                             f"{device_type}, which torch {torch.__version__} refuses: {e}") from None


def cast_trainable(model: torch.nn.Module, policy: Policy) -> int:
    """Move every trainable parameter to the policy's master dtype, in place (the Parameter
    objects stay, so tied weights stay tied); returns how many were cast. Call before the
    optimizer is built, so its state is created in the master dtype."""
    if policy.master_dtype is None:
        return 0
    cast = 0
    for p in model.parameters():
        if p.requires_grad and p.is_floating_point() and p.dtype != policy.master_dtype:
            p.data = p.data.to(policy.master_dtype)
            cast += 1
    return cast


def predict_state(c, res, b_schedule) -> dict:
    """The closed forms of ``analytic.state_bytes`` for a finished run (``c``: the cell as run,
    ``res``: the run's StepResult, runner/result.py): weights, grads and optimizer bytes at the instrumented step
    (the optimizer state as its step left it, before the freeze that follows: ``memory.optimizer``)."""
    from .. import analytic
    from ..analytic import quant as quant_bytes
    from . import objective, workloads

    applied = res.applied
    policy = get_policy(c.precision)
    base = workloads.torch_dtype(c.dtype).itemsize
    adapter = 4 if applied.info.get("autocast_adapter_dtype") else base
    if policy.master_dtype is not None:
        trainable = policy.master_dtype.itemsize
    else:
        trainable = base if analytic.family(c.method) == "full" else adapter  # full trains the model's own weights
    # A preference objective's frozen reference copy (full fine-tuning, model/objective.py): no
    # grads, no state; its weights come back below as its parameters at the load dtype.
    ref = getattr(applied.model, objective.REFERENCE_MODULE, None)
    ref_params = {id(p): p for p in ref.parameters()} if ref is not None else {}
    ref_buffers = ({id(b.untyped_storage()): b.untyped_storage().nbytes() for b in ref.buffers()}
                   if ref is not None else {})
    params = {id(p): p for p in applied.model.parameters() if id(p) not in ref_params}
    buffers = {id(b.untyped_storage()): b.untyped_storage().nbytes() for b in applied.model.buffers()
               if id(b.untyped_storage()) not in ref_buffers}
    # A quantized base (analytic/quant.py): its linears leave the count at the model dtype (their
    # stored elements and quant-state buffers) and come back as the hand count of their bytes.
    qbase = quant_bytes.quantized_base(applied.model)
    stored, state = (qbase.stored_elements, qbase.state_storages) if qbase else (0, frozenset())
    # kbit_prepare (model/kbit.py): PEFT cast every fp16/bf16 parameter of the base left in the
    # count (embeddings, norms, lm_head; not the quantized linears, counted apart) to fp32.
    base_weights = 4 if getattr(c, "kbit_prepare", False) else base
    adamw = res.info.get("optimizer_class") == "AdamW" and c.optimizer in TORCH_ADAMW
    try:
        out = analytic.state_bytes(
            c.method, res.layers, c.r, total_tensors=len(params),
            total_params=applied.num_total() - sum(p.numel() for p in ref_params.values()) - stored,
            buffer_bytes=sum(n for k, n in buffers.items() if k not in state), base_itemsize=base_weights,
            adapter_itemsize=adapter, trainable_itemsize=trainable, optimizer="adamw" if adamw else None,
            step=res.instrumented_step - 1, optimizer_step=res.instrumented_step - 1, b_schedule=b_schedule)
    except analytic.AnalyticError:
        return {"weights": None, "grads": None, "optimizer": None}
    if qbase is not None:
        out["weights"] += qbase.weight_bytes
    if ref is not None:
        out["weights"] += sum(p.numel() for p in ref_params.values()) * base_weights + sum(ref_buffers.values())
    if c.optimizer not in TORCH_ADAMW:  # every other optimizer's closed form (analytic/optimizers.py)
        out.update(optimizer_forms(c, res))
    return out


def optimizer_forms(c, res) -> dict:
    """optimizer and optimizer_paged closed forms from the trainable tensors' shapes (observed)."""
    from ..analytic import optimizers as forms
    from ..optimizers.build import embedding_params

    embeddings = embedding_params(res.applied.model)
    tensors = [forms.Tensor(tuple(p.shape), p.element_size(), id(p) in embeddings)
               for p in res.applied.trainable_parameters()]
    out = forms.state_bytes(c.optimizer, tensors, paged_target=bool(res.info.get("optimizer_paged_target")))
    if c.optimizer == "sgd":
        out.pop("optimizer_paged")
    return out


_region = threading.local()


def autocast_enabled() -> bool:
    """Whether a policy's autocast region is open on this thread (the live tracker asks, per op).

    ``torch.is_autocast_enabled`` cannot answer from inside a dispatch mode: the op is already
    below the autocast dispatch key there, which reads as disabled."""
    return getattr(_region, "depth", 0) > 0


@contextlib.contextmanager
def _autocast_region(device_type: str, dtype: torch.dtype):
    _region.depth = getattr(_region, "depth", 0) + 1
    try:
        with torch.autocast(device_type, dtype=dtype):
            yield
    finally:
        _region.depth -= 1


def start(name: str, device_type: str, fake: bool) -> "PrecisionRun":
    """The policy ``name`` ready to run on ``device_type``; one line where this torch cannot."""
    policy = get_policy(name)
    check_supported(policy, device_type)
    return PrecisionRun(policy, device_type, fake)


class PrecisionRun:
    """The three points of a training step a policy changes: the forward context, the
    backward call and the optimizer step. ``PrecisionRun()`` is the pure policy: a plain
    ``loss.backward()`` and ``optimizer.step()``."""

    def __init__(self, policy: Policy | None = None, device_type: str = "cpu", fake: bool = False) -> None:
        self.policy = policy or get_policy(DEFAULT_PRECISION)
        self.device_type = device_type
        self.fake = fake
        self.scaler = None
        if self.policy.grad_scaler:
            self.scaler = torch.amp.GradScaler(device_type)

    def forward(self):
        if self.policy.autocast_dtype is None:
            return contextlib.nullcontext()
        return _autocast_region(self.device_type, self.policy.autocast_dtype)

    def backward(self, loss: torch.Tensor) -> None:
        if self.scaler is None:
            loss.backward()
        else:
            self.scaler.scale(loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
        elif self.fake:
            # GradScaler.step reads the found-inf flag with .item(): no value on a fake tensor.
            self.scaler.unscale_(optimizer)
            optimizer.step()
            self.scaler.update()
        else:
            self.scaler.step(optimizer)
            self.scaler.update()
