"""Fused linear cross-entropy (cell key ``loss = "fused_linear_ce"``): the causal-LM loss computed
from the decoder's hidden states and lm_head's weight in row chunks, never the full logits.

Modelled on Liger-Kernel's ``LigerFusedLinearCrossEntropyFunction``
(src/liger_kernel/ops/fused_linear_cross_entropy.py) as ``LigerForCausalLMLoss`` calls it
(labels padded with -100 and shifted, hidden states flattened, reduction "mean"). Its Triton
kernel cannot run on CPU or fake tensors, so this is a plain-torch equivalent that allocates
what Liger allocates: ``grad_input`` (zeros like the input), ``grad_weight`` (zeros like the
weight, only when the weight trains), ``loss_1d`` (fp32, one per row), the ignore mask; per
chunk of ``chunk_size`` rows the logits chunk ``x @ W.T`` in the compute dtype, turned into its
own gradient in place (Liger's kernel does the fp32 softmax in registers and writes the gradient
over the logits), then ``grad_input[rows] = g @ W`` and ``grad_weight += (g.T @ x).float()``.
The gradients are computed in forward and kept; backward only scales them in place.

Not Liger's: a few per-row vectors (max, sum, target logit; chunk_size elements each) that its
kernel keeps in registers, and its ``.item()`` on the non-ignored count (kept a tensor here, so
fake tensors trace it). On sm80+ with an fp32 weight and bf16/fp16 logits (amp, full fine-tuning)
Liger accumulates grad_weight with ``addmm(out_dtype=fp32)``, skipping the V x H product this
path allocates; adapter methods never train lm_head, so they never take that path.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError

KIND = "fused_linear_ce"
IGNORE_INDEX = -100
MODELLED_ON = ("Liger-Kernel's LigerFusedLinearCrossEntropyFunction (mean reduction, as LigerForCausalLMLoss "
               "calls it), run as a plain-torch equivalent with its allocations, not its Triton kernels")


class FusedLossError(UserError):
    """A cell whose loss cannot be the fused linear cross-entropy (one line)."""


def _next_power_of_2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def chunk_size(rows: int, hidden: int, vocab: int) -> int:
    """Liger's chunk: rows split so a chunk's logits are about the size of the input (BT x H)."""
    inc_factor = -(-vocab // hidden)
    return _next_power_of_2(-(-rows // inc_factor))


class FusedLinearCrossEntropy(torch.autograd.Function):
    """loss = mean cross-entropy of (x @ W.T, target) over non-ignored rows; x: (BT, H), W: (V, H)."""

    @staticmethod
    def forward(ctx, x, weight, target):
        rows, hidden = x.shape
        vocab = weight.shape[0]
        chunk = chunk_size(rows, hidden, vocab)
        input_needs_grad = ctx.needs_input_grad[0]
        grad_input = torch.zeros_like(x)
        grad_weight = torch.zeros_like(weight) if input_needs_grad and ctx.needs_input_grad[1] else None
        loss_1d = torch.zeros(rows, dtype=torch.float32, device=x.device)
        n_valid = (target != IGNORE_INDEX).sum()  # Liger: .item(); a tensor here (fake tensors)
        for start in range(0, rows, chunk):
            end = min(start + chunk, rows)
            x_chunk = x[start:end]
            logits = x_chunk @ weight.t()  # chunk x V, compute dtype: the only large temporary
            t = target[start:end]
            valid = t != IGNORE_INDEX
            t_safe = t.clamp_min(0).unsqueeze(1)
            picked = logits.gather(1, t_safe).squeeze(1).float()
            top = logits.amax(dim=1, keepdim=True)
            logits.sub_(top).exp_()
            total = logits.sum(dim=1, keepdim=True, dtype=torch.float32)
            logits.div_(total.to(logits.dtype))  # softmax, in place (same dtype: no cast temporary)
            scale = valid.float() / n_valid
            loss_1d[start:end] = (total.squeeze(1).log() + top.squeeze(1).float() - picked) * scale
            logits.scatter_add_(1, t_safe, torch.full_like(t_safe, -1, dtype=logits.dtype))
            logits.mul_(scale.to(logits.dtype).unsqueeze(1))  # the logits' gradient, in place (ignored rows: 0)
            if input_needs_grad:
                grad_input[start:end] = logits @ weight
            if grad_weight is not None:
                grad_weight += torch.mm(logits.t(), x_chunk).float()
            del logits
        loss = loss_1d.sum()
        ctx.save_for_backward(grad_input.detach(), grad_weight.detach() if grad_weight is not None else None)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        grad_input, grad_weight = ctx.saved_tensors
        # Liger skips the scaling when grad_output == 1 (a data-dependent test fake tensors cannot
        # take); its scaling is in place, as here, so the bytes are the same either way.
        grad_input.mul_(grad_output.to(grad_input.dtype))
        if grad_weight is not None:
            grad_weight.mul_(grad_output.to(grad_weight.dtype))
        return grad_input, grad_weight, None


def fused_linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return FusedLinearCrossEntropy.apply(x, weight, target)


# ---- the causal-LM loss -----------------------------------------------------------------


def causal_lm_model(model: nn.Module) -> nn.Module:
    """The *ForCausalLM module under a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def lm_head_weight(model: nn.Module, workload: str) -> torch.Tensor:
    """lm_head's weight as Liger takes it; a one-line refusal where the head is not a plain bias-free
    linear (an adapted lm_head: its adapter's output would be left out of the logits)."""
    head = causal_lm_model(model).get_output_embeddings()
    if type(head) is not nn.Linear:
        raise FusedLossError(f"loss 'fused_linear_ce' needs lm_head to be a plain nn.Linear; workload {workload!r} "
                             f"has {type(head).__name__} there (an adapted or replaced lm_head is not modelled)")
    if head.bias is not None:
        raise FusedLossError(f"loss 'fused_linear_ce': workload {workload!r}'s lm_head has a bias, which is not modelled")
    return head.weight


def causal_lm_loss(model: nn.Module, inputs: dict, workload: str) -> torch.Tensor:
    """The decoder body's hidden states (no logits), then the fused loss with lm_head's weight."""
    lm = causal_lm_model(model)
    weight = lm_head_weight(model, workload)
    hidden = lm.base_model(input_ids=inputs["input_ids"]).last_hidden_state
    labels = nn.functional.pad(inputs["labels"], (0, 1), value=IGNORE_INDEX)
    shift_labels = labels[..., 1:].contiguous()
    return fused_linear_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), weight, shift_labels.view(-1))


def problem(workload_name: str, task: str, config: dict | None, output_router_logits: bool | None) -> str | None:
    """One line saying why a workload cannot take the fused loss, or None."""
    if task != "causal-lm":
        return (f"loss 'fused_linear_ce' applies to causal-LM workloads only; {workload_name!r} is {task} "
                "(its loss is not a next-token cross-entropy over lm_head)")
    config = config or {}
    text = config.get("text_config") or config
    if text.get("final_logit_softcapping") not in (None, 0):
        return (f"loss 'fused_linear_ce' on {workload_name!r}: final_logit_softcapping is not modelled "
                "(Liger applies it in its kernel; this equivalent does not)")
    for key in ("logit_scale", "logits_scaling"):
        if text.get(key) not in (None, 1, 1.0):
            return f"loss 'fused_linear_ce' on {workload_name!r}: the config's {key} is not modelled"
    router = text.get("output_router_logits") if output_router_logits is None else output_router_logits
    if router:
        return (f"loss 'fused_linear_ce' on {workload_name!r}: the router's auxiliary loss (output_router_logits) "
                "is not modelled with it; set output_router_logits = false")
    return None


def describe(rows: int, hidden: int, vocab: int, logits_dtype_bytes: int) -> dict:
    """What the record says was modelled (info.loss)."""
    chunk = chunk_size(rows, hidden, vocab)
    return {"kind": KIND, "chunk_size": chunk, "chunks": -(-rows // chunk), "rows": rows, "vocab": vocab,
            "logits_chunk_bytes": chunk * vocab * logits_dtype_bytes,
            "full_logits_fp32_bytes": rows * vocab * 4, "modelled_on": MODELLED_ON}
