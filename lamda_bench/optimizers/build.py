"""Building a cell's optimizer for a model's trainable parameters, as the HF Trainer builds it,
on real tensors and on fake ones alike.

- Trainer names: class and keyword arguments from transformers' own
  ``Trainer.get_optimizer_cls_and_kwargs`` (``TrainingArguments(optim=..., learning_rate=lr)``),
  over one flat group of the trainable parameters (the Trainer's decay / no-decay split changes
  no state bytes).
- bitsandbytes under fake tensors: its quantile maps (``create_dynamic_map``) are computed from
  values (``.tolist()``), which fake tensors have not, so the optimizer is constructed with fake
  mode off and its two 256-entry maps are then made fake; its step then runs on fake tensors
  (its ops have fake kernels) and creates exactly the state a real step creates.
- Paged state (``paged_*``): on a GPU bitsandbytes puts every state buffer of a tensor with at
  least 1e5 elements in CUDA unified memory (``F.get_paged``, tagged ``is_paged``). On a CPU it
  falls back to ordinary tensors. A run that stands for a GPU run (``paged_target``) tags the
  buffers bitsandbytes would page the same way, so ``memory.optimizer_paged`` counts them apart.
- ``muon``: torch's Muon for every 2-D parameter that is not an input or output embedding,
  torch's AdamW for the rest, one optimizer object over both (``MuonWithAdamW``).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, unset_fake_temporarily

from .catalogue import OptimizerError, entry, method_problem

PAGED_MIN_NUMEL = 100_000  # bitsandbytes Optimizer8bit.get_state_buffer: smaller tensors are never paged


def check(name: str, method_family: str, parallel: str) -> None:
    """The one-line refusal for an unknown name or one that cannot serve this method / layout."""
    entry(name)
    found = method_problem(name, method_family, parallel)
    if found:
        raise OptimizerError(found)


def build(name: str, params: list[nn.Parameter], lr: float, *, model: nn.Module | None = None,
          paged_target: bool = False) -> torch.optim.Optimizer:
    """Optimizer ``name`` (not ``adamw``, which is the method's own) over ``params``."""
    e = entry(name)
    if e.kind == "muon":
        return muon_with_adamw(params, lr, model)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr)
    if e.kind == "sgd":  # the Trainer's SGD(lr) (a test checks), built directly: it also serves parallel cells,
        return torch.optim.SGD(params, lr=lr)  # where TrainingArguments would look at the process group
    cls, kwargs = trainer_class_and_kwargs(name, lr)
    fake = next((p.fake_mode for p in params if isinstance(p, FakeTensor)), None)
    if e.kind.startswith("bnb"):
        with unset_fake_temporarily() if fake is not None else contextlib.nullcontext():
            opt = cls(params, **kwargs)
        if fake is not None:
            opt.name2qmap = {k: fake.from_tensor(v) for k, v in opt.name2qmap.items()}
        if e.paged:
            tag_paged_buffers(opt, paged_target)
        return opt
    return cls(params, **kwargs)


def trainer_class_and_kwargs(name: str, lr: float):
    """(class, kwargs) exactly as the HF Trainer resolves ``optim=name`` at learning rate ``lr``."""
    import tempfile

    from transformers import Trainer, TrainingArguments

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, optim=name, learning_rate=lr, report_to="none")
        try:
            return Trainer.get_optimizer_cls_and_kwargs(args)
        except ImportError as e:  # a package the Trainer needs for this name
            raise OptimizerError(f"optimizer {name!r}: {str(e).splitlines()[0]}") from None


def tag_paged_buffers(opt, paged_target: bool) -> None:
    """Route bitsandbytes' state buffers: a real CUDA tensor keeps bitsandbytes' own paging;
    otherwise an ordinary tensor, tagged ``is_paged`` where a GPU run would have paged it."""
    original = opt.get_state_buffer

    def get_state_buffer(p, dtype=torch.float32):
        if p.device.type == "cuda" and not isinstance(p, FakeTensor):
            return original(p, dtype=dtype)
        buf = torch.zeros_like(p, dtype=dtype, device=p.device)
        if paged_target and p.numel() >= PAGED_MIN_NUMEL:
            buf.is_paged = True
        return buf

    opt.get_state_buffer = get_state_buffer
    original_prefetch = opt.prefetch_state

    def prefetch_state(p):  # only bitsandbytes' own paged buffers (they carry a page_deviceid) prefetch
        if getattr(opt.state[p].get("state1"), "page_deviceid", None) is not None:
            original_prefetch(p)

    opt.prefetch_state = prefetch_state


def is_paged(t: torch.Tensor) -> bool:
    return bool(getattr(t, "is_paged", False))


def embedding_params(model: nn.Module | None) -> set[int]:
    """ids of the input and output embedding weights (Muon's recipe trains them with AdamW)."""
    out: set[int] = set()
    if model is None:
        return out
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        fn = getattr(model, getter, None)
        try:
            module = fn() if fn is not None else None
        except (NotImplementedError, AttributeError):
            module = None
        if module is not None and getattr(module, "weight", None) is not None:
            out.add(id(module.weight))
    return out


def muon_split(params: list[nn.Parameter], model: nn.Module | None) -> tuple[list, list]:
    """(Muon's parameters: 2-D and not an embedding, AdamW's: the rest)."""
    embeddings = embedding_params(model)
    muon = [p for p in params if p.ndim == 2 and id(p) not in embeddings]
    rest = [p for p in params if not (p.ndim == 2 and id(p) not in embeddings)]
    return muon, rest


class MuonWithAdamW(torch.optim.Optimizer):
    """One optimizer over two: torch Muon and torch AdamW. ``param_groups`` and ``state`` are
    both parts' (so trackers, GradScaler and zero_grad see every parameter); ``split`` says how
    many parameters and elements went where."""

    def __init__(self, muon: torch.optim.Optimizer | None, adamw: torch.optim.Optimizer | None):
        self.parts = [o for o in (muon, adamw) if o is not None]
        self.defaults = {}
        self.param_groups = [g for o in self.parts for g in o.param_groups]
        self._optimizer_step_pre_hooks = {}
        self._optimizer_step_post_hooks = {}
        self.split = {name: {"tensors": sum(len(g["params"]) for g in o.param_groups),
                             "elements": sum(p.numel() for g in o.param_groups for p in g["params"])}
                      for name, o in (("muon", muon), ("adamw", adamw)) if o is not None}

    @property
    def state(self):
        merged = {}
        for o in self.parts:
            merged.update(o.state)
        return merged

    @torch.no_grad()
    def step(self, closure=None):
        for o in self.parts:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.parts:
            o.zero_grad(set_to_none=set_to_none)


def muon_with_adamw(params: list[nn.Parameter], lr: float, model: nn.Module | None) -> MuonWithAdamW:
    muon, rest = muon_split(params, model)
    return MuonWithAdamW(torch.optim.Muon(muon, lr=lr) if muon else None,
                         torch.optim.AdamW(rest, lr=lr) if rest else None)
