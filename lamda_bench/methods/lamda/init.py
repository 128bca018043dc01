"""LaMDA's initial factors: A (r x d_in), S (r x r), B (d_out x r), and the base weight they leave.

The adapter adds s * B S A x to the base output (s = alpha / r). Option ``init``:

* ``"svd"`` (default): **the paper's form**, as its summary states it: both projections from
  the top-r singular vectors of the pretrained weight W = U Sigma V^T, A = V_r^T and B = U_r,
  and the r x r core S initialised as the identity. The summary says nothing about the base
  weight; **ours**: the base becomes W_res = W - s * B S A = W - s * U_r V_r^T, so that the
  layer's output is unchanged at init (exactly in fp32; up to the rounding of the residual in
  bf16/fp16). In W_res the top-r singular directions carry sigma_i - s instead of sigma_i: unlike
  PiSSA's residual, the principal components mostly stay in the base.
* ``"svd-sigma"``: **ours** (this project's default before the paper's form was adopted): the
  same A and B, S = Sigma_r / s, and the base W - U_r Sigma_r V_r^T (PiSSA's residual: the
  top-r components move into the adapter), again so that the output is unchanged at init.
* ``"lora"``: what the authors' public code does: A Kaiming-uniform (a = sqrt(5), as nn.Linear
  and PEFT's lora_A), S Kaiming-uniform ("random"), B zero; the base is untouched.

The inits change values only, never shapes, so no memory or FLOP figure depends on them.
``svd_niter=None`` uses the full ``torch.linalg.svd``; ``svd_niter=K`` uses
``torch.svd_lowrank(W, q=r, niter=K)`` like PEFT's ``pissa_niter_K``, so LaMDA and PiSSA pay the
same init. The SVD runs in fp32 whatever the model dtype. On the meta device (or fake tensors)
no SVD can run: the same shapes are built and the label says the init is shape-only.
"""

from __future__ import annotations

import math

import torch
from torch import nn

INITS = ("svd", "svd-sigma", "lora")
INIT_DOC = ("'svd' (the paper's form): A = V_r^T, B = U_r, S = I, base W - s U_r V_r^T; 'svd-sigma' (ours): "
            "S = Sigma_r / s, base W - U_r Sigma_r V_r^T; 'lora': A Kaiming, B zero, S random")


def is_shape_only(t: torch.Tensor) -> bool:
    """True for meta tensors and fake tensors: shapes without values."""
    if t.is_meta:
        return True
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor)


def initial_factors(
    base: nn.Linear, r: int, scaling: float, init: str, svd_niter: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """A, S, B for ``init`` (module docstring); for the SVD inits the base weight is replaced by
    its residual in place. Returns the factors (fp32 for the SVD inits, the weight's dtype for
    "lora"; the caller casts to the adapter dtype) and a label of the init actually done."""
    w = base.weight
    d_out, d_in = w.shape
    if is_shape_only(w):
        label = f"{init} (shape-only: weights on the meta device or fake, no values to initialise)"
        return w.new_empty(r, d_in), w.new_empty(r, r), w.new_empty(d_out, r), label
    with torch.no_grad():
        if init == "lora":
            a = torch.empty(r, d_in, dtype=torch.float32, device=w.device)
            s = torch.empty(r, r, dtype=torch.float32, device=w.device)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            nn.init.kaiming_uniform_(s, a=math.sqrt(5))
            b = torch.zeros(d_out, r, dtype=torch.float32, device=w.device)
            return a.to(w.dtype), s.to(w.dtype), b.to(w.dtype), "lora"
        w32 = w.detach().float()
        if svd_niter is None:
            u, sig, vh = torch.linalg.svd(w32, full_matrices=False)
            u, sig, vh = u[:, :r], sig[:r], vh[:r]
            how = "full torch.linalg.svd"
        else:
            u, sig, v = torch.svd_lowrank(w32, q=r, niter=svd_niter)
            vh = v.T
            how = f"torch.svd_lowrank, niter={svd_niter}"
        if init == "svd-sigma":
            core = torch.diag(sig / scaling)
            residual = w32 - (u * sig) @ vh  # W - U_r Sigma_r V_r^T = W - s B S A
        else:
            core = torch.eye(r, dtype=torch.float32, device=w.device)
            residual = w32 - scaling * (u @ vh)  # W - s U_r V_r^T = W - s B S A
        base.weight.copy_(residual.to(w.dtype))
        return vh.contiguous(), core, u.contiguous(), f"{init} ({how})"
