"""Preference-training objectives (cell key ``objective``): a DPO, ORPO, SimPO or KTO step run as TRL
runs it, so its memory (twice the rows, a reference forward, the log-prob and metric tensors) is
measured and estimated like any other step.

Read from TRL's main branch at commit f2cd577 (version 1.10.0.dev0, 2026-07-24):
``trl/trainer/dpo_trainer.py`` (``DPOTrainer._compute_loss``: one forward of the chosen rows then
the rejected rows, the reference forward under ``no_grad`` with PEFT's adapters disabled or a
separate ``ref_model``, or reference log-probs read from the batch with ``precompute_ref_log_probs``;
loss_type "sigmoid", beta 0.1), ``trl/trainer/kto_trainer.py`` (``_compute_loss``,
``_compute_kl_logps``: a no-grad forward of the mismatched KL rows by the policy, the policy
forward, then the reference's KL and main forwards; loss_type "kto"),
``trl/experimental/orpo/orpo_trainer.py`` and ``trl/experimental/cpo/cpo_trainer.py``
(``concatenated_forward``, ``get_batch_logps``; SimPO is CPO with loss_type "simpo", cpo_alpha 0,
simpo_gamma 0.5, as LLaMA-Factory's simpo runs without its SFT term by default), and
``trl/trainer/utils.py`` (``selective_log_softmax``, ``entropy_from_logits``, copied below).
The metric tensors each trainer computes in its step (entropy, mean logits, token accuracy) are
computed too: they allocate (a copy of the shifted logits, the chosen completions' logits);
their ``.item()`` host reads are not (no memory).

Where this differs from TRL, for fake tensors (no data-dependent shapes): a boolean-mask index
(``x[mask] = 0``, ``x[mask.bool()]``, ``torch.nonzero(labels)``) is the integer index that its
``nonzero`` gives, computed once with the batch (``make_inputs``), then the same indexing op. The
batch has no padding (every row ``seq`` tokens: the prompt the first ``seq // 2``, the completion
the rest; KTO rows alternate desirable and undesirable), so the all-ones attention mask TRL
passes is left out, as the SFT cells leave it out.
"""

from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError

OBJECTIVES = ("sft", "dpo", "orpo", "simpo", "kto")
PAIRED = ("dpo", "orpo", "simpo")  # chosen and rejected rows, concatenated: 2 x batch rows
WITH_REFERENCE = ("dpo", "kto")  # a reference model's log-probs
BETA = 0.1  # DPOConfig, KTOConfig, ORPOConfig, CPOConfig default
SIMPO_GAMMA = 0.5  # CPOConfig.simpo_gamma
REFERENCE_MODULE = "objective_reference"  # full fine-tuning: the frozen copy, a submodule (its weights count)
TRL_READ = "TRL main f2cd577 (1.10.0.dev0)"


class ObjectiveError(UserError):
    """A cell whose objective cannot run as asked (one line)."""


# ---- what applies ------------------------------------------------------------------------


def needs_reference_forward(cell) -> bool:
    return cell.objective in WITH_REFERENCE and not cell.precompute_ref_log_probs


def problem(cell, task: str, config: dict | None) -> str | None:
    """One line saying why the cell's objective cannot run, or None."""
    o = cell.objective
    text = (config or {}).get("text_config") or config or {}
    router_logits = text.get("output_router_logits") if cell.output_router_logits is None else cell.output_router_logits
    if o == "sft":
        if cell.precompute_ref_log_probs:
            return "precompute_ref_log_probs = true needs objective 'dpo' or 'kto' (the objective is 'sft')"
        return None
    if task != "causal-lm":
        return f"objective {o!r} applies to causal-LM workloads only; {cell.workload!r} is {task}"
    if cell.precompute_ref_log_probs and o not in WITH_REFERENCE:
        return f"precompute_ref_log_probs = true needs objective 'dpo' or 'kto'; {o!r} has no reference model"
    if cell.loss != "model":
        return (f"objective {o!r} with loss {cell.loss!r} is not modelled (TRL's Liger preference losses "
                "fuse the log-probs, not the cross-entropy); use loss = 'model'")
    if cell.parallel != "none":
        return f"objective {o!r} with parallel {cell.parallel!r} is not modelled; use parallel = 'none'"
    if cell.seq < 2:
        return f"objective {o!r} needs seq >= 2 (a prompt token and a completion token), got {cell.seq}"
    if o == "kto" and cell.batch < 2:
        return ("objective 'kto' needs batch >= 2: TRL refuses a batch of 1 (the KL rows are the batch's "
                "completions cycled by one)")
    if router_logits:
        return (f"objective {o!r}: the router's auxiliary loss (output_router_logits) is not modelled with it; "
                "set output_router_logits = false")
    return None


def method_problem(cell, method_name: str) -> str | None:
    """LaMDA cannot switch its adapter off: a reference forward through it is refused."""
    if needs_reference_forward(cell) and method_name in ("lamda", "lamda++"):
        return (f"objective {cell.objective!r} with method {method_name!r}: the reference forward runs the base "
                "with the adapter disabled, which LaMDA cannot do; set precompute_ref_log_probs = true, or "
                "use 'orpo' / 'simpo' (no reference)")
    return None


def attach_reference(model: nn.Module, cell) -> None:
    """Full fine-tuning (no PEFT adapter to disable): TRL loads a second, frozen model as ref_model.
    It is a frozen deep copy here, kept as a submodule so the trackers count its weights."""
    if needs_reference_forward(cell) and not hasattr(model, "disable_adapter"):
        ref = copy.deepcopy(model)
        ref.requires_grad_(False)
        ref.eval()  # TRL prepares it with evaluation_mode=True (no dropout)
        model.add_module(REFERENCE_MODULE, ref)


def reference_kind(model: nn.Module, cell) -> str:
    if cell.objective not in WITH_REFERENCE:
        return "none"
    if cell.precompute_ref_log_probs:
        return "precomputed"
    return "frozen copy" if hasattr(model, REFERENCE_MODULE) else "disabled adapters"


def rows(cell) -> dict:
    if cell.objective in PAIRED:
        return {"policy": 2 * cell.batch, "reference": 2 * cell.batch if needs_reference_forward(cell) else 0}
    if cell.objective == "kto":
        ref = 2 * cell.batch if needs_reference_forward(cell) else 0
        return {"policy": cell.batch, "policy_kl_no_grad": cell.batch, "reference": ref}
    return {"policy": cell.batch, "reference": 0}


def describe(cell, model: nn.Module) -> dict:
    """What the record says was modelled (info.objective)."""
    kind = reference_kind(model, cell)
    out = {"objective": cell.objective, "read_from": TRL_READ, "reference": kind, "rows": rows(cell),
           "prompt_tokens": cell.seq // 2, "completion_tokens": cell.seq - cell.seq // 2, "beta": BETA}
    if kind == "frozen copy":
        ref = getattr(model, REFERENCE_MODULE)
        out["reference_weights_bytes"] = sum(t.untyped_storage().nbytes() for t in
                                             {id(p): p for p in [*ref.parameters(), *ref.buffers()]}.values())
        out["note"] = "memory.weights, predicted.weights and params.total include the frozen reference copy"
    if cell.objective == "simpo":
        out["simpo_gamma"], out["cpo_alpha"] = SIMPO_GAMMA, 0.0
    return out


# ---- the batch -----------------------------------------------------------------------------


def _grid(rows_: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """The (2, n) integer index of every (row, col) pair, rows outer: what nonzero gives for a mask
    that is true exactly there (built with arange, so fake tensors can build it too)."""
    return torch.stack([rows_.repeat_interleave(len(cols)), cols.repeat(len(rows_))])


def make_inputs(cell, tokens, device) -> dict[str, torch.Tensor]:
    """The objective's batch: ``tokens(shape)`` gives random token ids (zeros on meta)."""
    b, s, p = cell.batch, cell.seq, cell.seq // 2

    def arange(*args):
        return torch.arange(*args, device=device)

    def completion_mask(n):
        return torch.cat([torch.zeros(n, p, dtype=torch.long, device=device),
                          torch.ones(n, s - p, dtype=torch.long, device=device)], 1)

    prompt_cols, completion_cols = arange(p - 1), arange(p - 1, s - 1)  # in the shifted mask (s - 1 wide)
    if cell.objective in PAIRED:
        prompt, chosen, rejected = tokens((b, p)), tokens((b, s - p)), tokens((b, s - p))
        ids = torch.cat([torch.cat([prompt, chosen], 1), torch.cat([prompt, rejected], 1)], 0)  # [chosen; rejected]
        mask = completion_mask(2 * b)
        out = {"input_ids": ids, "completion_mask": mask, "prompt_index": _grid(arange(2 * b), prompt_cols),
               "completion_index": _grid(arange(b), completion_cols)}  # one half's completions
        if cell.objective in ("orpo", "simpo"):  # concatenated_labels: the prompt at -100
            out["labels"] = ids.masked_fill(mask == 0, -100)
        if cell.precompute_ref_log_probs:
            out["ref_chosen_logps"] = torch.zeros(b, device=device)
            out["ref_rejected_logps"] = torch.zeros(b, device=device)
        return out
    # kto: unpaired rows, alternately desirable and not; KL rows: each prompt with the previous completion
    prompt, completion = tokens((b, p)), tokens((b, s - p))
    ids = torch.cat([prompt, completion], 1)
    kl_ids = torch.cat([prompt, torch.roll(completion, 1, 0)], 1)
    chosen_idx, rejected_idx = arange(0, b, 2), arange(1, b, 2)
    out = {"input_ids": ids, "completion_mask": completion_mask(b), "prompt_index": _grid(arange(b), prompt_cols),
           "KL_input_ids": kl_ids, "chosen_idx": chosen_idx, "rejected_idx": rejected_idx,
           "chosen_completion_index": _grid(arange(len(chosen_idx)), completion_cols),
           "rejected_completion_index": _grid(arange(len(rejected_idx)), completion_cols)}
    if cell.precompute_ref_log_probs:
        out["ref_logps"] = torch.zeros(b, device=device)
        out["ref_KL_logps"] = torch.zeros(b, device=device)
    return out


# ---- TRL's helpers (trl/trainer/utils.py) --------------------------------------------------


def selective_log_softmax(logits, index) -> torch.Tensor:
    """TRL's ``selective_log_softmax``, op for op: per row to keep the peak down."""
    squeeze = index.ndim == logits.ndim - 1
    if squeeze:
        index = index.unsqueeze(-1)
    if logits.dtype in [torch.float32, torch.float64]:
        selected_logits = torch.gather(logits, dim=-1, index=index)
        logsumexp_values = torch.stack([torch.logsumexp(lg, dim=-1) for lg in logits])
        per_token_logps = selected_logits - logsumexp_values.unsqueeze(-1)
    else:  # TRL: logsumexp is unstable in bfloat16, so a log_softmax per row
        per_token_logps = []
        for row_logits, row_labels in zip(logits, index, strict=True):
            row_logps = F.log_softmax(row_logits, dim=-1)
            per_token_logps.append(row_logps.gather(dim=-1, index=row_labels))
        per_token_logps = torch.stack(per_token_logps)
    if squeeze:
        per_token_logps = per_token_logps.squeeze(-1)
    return per_token_logps


def entropy_from_logits(logits: torch.Tensor, chunk_size: int = 128) -> torch.Tensor:
    """TRL's ``entropy_from_logits`` (a metric; its reshape copies non-contiguous logits)."""
    original_shape = logits.shape[:-1]
    flat_logits = logits.reshape(-1, logits.shape[-1])
    entropies = []
    for chunk in flat_logits.split(chunk_size, dim=0):
        logps = F.log_softmax(chunk, dim=-1)
        entropies.append(-(torch.exp(logps) * logps).sum(-1))
    return torch.cat(entropies, dim=0).reshape(original_shape)


def _zero_prompt(per_token_logps: torch.Tensor, index: torch.Tensor) -> None:
    """TRL: ``per_token_logps[shift_completion_mask == 0] = 0.0`` (the mask's nonzero, given)."""
    per_token_logps[index[0], index[1]] = 0.0


@contextlib.contextmanager
def _unpacked_positions():
    """TRL calls the model with ``use_cache=False``: transformers then reads the positions to find
    packed sequences, which fake tensors cannot (it keeps a packed-sequence mask, and SDPA an explicit
    mask, that the real run drops). The positions here are plain 0..s-1, no packing: the answer the
    real run reads is None, given to both."""
    from transformers import masking_utils

    found = masking_utils.find_packed_sequence_indices
    masking_utils.find_packed_sequence_indices = lambda position_ids: None
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = found


def _forward(model: nn.Module, input_ids: torch.Tensor):
    with _unpacked_positions():
        return model(input_ids=input_ids, use_cache=False)


def _reference_forward(model: nn.Module, input_ids: torch.Tensor):
    """Under no_grad: PEFT's adapters disabled (TRL's use_adapter(model, None)), or the frozen copy."""
    with torch.no_grad():
        if hasattr(model, REFERENCE_MODULE):
            return _forward(getattr(model, REFERENCE_MODULE), input_ids)
        with model.disable_adapter():
            return _forward(model, input_ids)


def _sequence_logps(logits, input_ids, prompt_index) -> torch.Tensor:
    per_token_logps = selective_log_softmax(logits[..., :-1, :], input_ids[..., 1:])
    _zero_prompt(per_token_logps, prompt_index)
    return per_token_logps.sum(dim=1)


# ---- the losses --------------------------------------------------------------------------


def compute_loss(cell, model: nn.Module, inputs: dict) -> torch.Tensor:
    if cell.objective == "dpo":
        return dpo_loss(cell, model, inputs)
    if cell.objective == "kto":
        return kto_loss(cell, model, inputs)
    return cpo_loss(cell, model, inputs)


def dpo_loss(cell, model, inputs) -> torch.Tensor:
    """DPOTrainer._compute_loss, loss_type "sigmoid", f_divergence "reverse_kl", no ld_alpha."""
    input_ids = inputs["input_ids"]
    outputs = _forward(model, input_ids)
    shift_logits = outputs.logits[..., :-1, :]
    shift_labels = input_ids[..., 1:]
    per_token_logps = selective_log_softmax(shift_logits, shift_labels)
    _zero_prompt(per_token_logps, inputs["prompt_index"])
    logps = per_token_logps.sum(dim=1)
    chosen_logps, rejected_logps = logps.chunk(2, dim=0)
    if cell.precompute_ref_log_probs:
        ref_chosen_logps, ref_rejected_logps = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
    else:
        ref_outputs = _reference_forward(model, input_ids)
        ref_shift_logits = ref_outputs.logits[..., :-1, :]
        ref_per_token_logps = selective_log_softmax(ref_shift_logits, shift_labels)
        _zero_prompt(ref_per_token_logps, inputs["prompt_index"])
        ref_logps = ref_per_token_logps.sum(dim=1)
        ref_chosen_logps, ref_rejected_logps = ref_logps.chunk(2, dim=0)
    chosen_logratios = chosen_logps - ref_chosen_logps
    rejected_logratios = rejected_logps - ref_rejected_logps
    delta_score = chosen_logratios - rejected_logratios
    loss = 0.0
    per_sequence_loss = -F.logsigmoid(BETA * delta_score)
    loss += per_sequence_loss.mean() * 1.0
    _paired_metrics(shift_logits, shift_labels, inputs)
    chosen_rewards = BETA * chosen_logratios.detach()
    rejected_rewards = BETA * rejected_logratios.detach()
    (chosen_rewards > rejected_rewards).float()
    chosen_rewards - rejected_rewards
    return loss


def _paired_metrics(shift_logits, shift_labels, inputs) -> None:
    """DPOTrainer's logged metrics that allocate: entropy, mean logits per half, token accuracy."""
    shift_completion_mask = inputs["completion_mask"][..., 1:]
    per_token_entropy = entropy_from_logits(shift_logits.detach())
    (per_token_entropy * shift_completion_mask).sum()
    shift_completion_mask.sum()
    chosen_logits, rejected_logits = shift_logits.detach().chunk(2, dim=0)
    index = inputs["completion_index"]  # chosen_mask.bool() and rejected_mask.bool() alike
    chosen_logits[index[0], index[1]].mean(-1).sum()
    rejected_logits[index[0], index[1]].mean(-1).sum()
    predictions = chosen_logits.argmax(dim=-1)
    chosen_mask = shift_completion_mask[: len(shift_completion_mask) // 2].bool()
    chosen_labels = shift_labels[: len(shift_labels) // 2]
    ((predictions == chosen_labels) & chosen_mask).sum()


def _get_batch_logps(logits, labels, average_log_prob: bool) -> torch.Tensor:
    """ORPOTrainer / CPOTrainer.get_batch_logps (decoder-only)."""
    labels = labels[:, 1:].clone()
    logits = logits[:, :-1, :]
    loss_mask = labels != -100
    labels = torch.where(labels == -100, 0, labels)
    per_token_logps = selective_log_softmax(logits, labels)
    if average_log_prob:
        return (per_token_logps * loss_mask).sum(-1) / loss_mask.sum(-1)
    return (per_token_logps * loss_mask).sum(-1)


def _cross_entropy_loss(logits, labels) -> torch.Tensor:
    logits = logits[..., :-1, :].contiguous()
    labels = labels[..., 1:].contiguous()
    return nn.CrossEntropyLoss()(logits.view(-1, logits.shape[-1]), labels.view(-1))


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    t = -0.6931471805599453
    return torch.where(x < t, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def cpo_loss(cell, model, inputs) -> torch.Tensor:
    """ORPO (ORPOTrainer.concatenated_forward + odds_ratio_loss) or SimPO (CPOTrainer, loss_type
    "simpo", cpo_alpha 0): no reference model."""
    input_ids, concatenated_labels = inputs["input_ids"], inputs["labels"]
    len_chosen = input_ids.shape[0] // 2
    all_logits = _forward(model, input_ids).logits
    if cell.objective == "orpo":  # the chosen NLL over prompt and response (attention_mask all ones)
        nll_loss = _cross_entropy_loss(all_logits[:len_chosen], input_ids.clone()[:len_chosen])
    else:
        nll_loss = torch.tensor(0.0).to(input_ids.device)
    all_logps = _get_batch_logps(all_logits, concatenated_labels, average_log_prob=True)
    chosen_logps, rejected_logps = all_logps[:len_chosen], all_logps[len_chosen:]
    if cell.objective == "orpo":
        chosen_logps, rejected_logps = chosen_logps.float(), rejected_logps.float()
        log_odds = (chosen_logps - rejected_logps) - (_log1mexp(chosen_logps) - _log1mexp(rejected_logps))
        losses = BETA * F.logsigmoid(log_odds)
        loss = nll_loss - losses.mean()
        all_logits[:len_chosen, :-1, :].detach().mean()
        all_logits[len_chosen:, :-1, :].detach().mean()
    else:
        logits = (chosen_logps - rejected_logps) - SIMPO_GAMMA / BETA
        losses = -F.logsigmoid(BETA * logits) * (1 - 0.0) - F.logsigmoid(-BETA * logits) * 0.0
        loss = losses.mean() + 0.0 * nll_loss
        all_logits[len_chosen:].detach().mean()
        all_logits[:len_chosen].detach().mean()
    return loss


def kto_loss(cell, model, inputs) -> torch.Tensor:
    """KTOTrainer._compute_loss, loss_type "kto" (KL term on), desirable/undesirable weights 1."""
    input_ids, kl_ids = inputs["input_ids"], inputs["KL_input_ids"]
    chosen_idx, rejected_idx = inputs["chosen_idx"], inputs["rejected_idx"]
    with torch.no_grad():  # _compute_kl_logps(model, batch): the policy on the KL rows, no grad
        kl_logits = _forward(model, kl_ids).logits
    KL_logps = _sequence_logps(kl_logits, kl_ids, inputs["prompt_index"])
    outputs = _forward(model, input_ids)
    shift_logits = outputs.logits[:, :-1, :]
    per_token_logps = selective_log_softmax(shift_logits, input_ids[:, 1:])
    _zero_prompt(per_token_logps, inputs["prompt_index"])
    completion_logps = per_token_logps.sum(-1)
    chosen_logps = completion_logps.index_select(0, chosen_idx)
    rejected_logps = completion_logps.index_select(0, rejected_idx)
    if cell.precompute_ref_log_probs:
        ref_chosen_logps = inputs["ref_logps"].index_select(0, chosen_idx)
        ref_rejected_logps = inputs["ref_logps"].index_select(0, rejected_idx)
        ref_KL_logps = inputs["ref_KL_logps"]
    else:
        ref_kl_logits = _reference_forward(model, kl_ids).logits
        ref_KL_logps = _sequence_logps(ref_kl_logits, kl_ids, inputs["prompt_index"])
        ref_outputs = _reference_forward(model, input_ids)
        ref_completion_logps = _sequence_logps(ref_outputs.logits, input_ids, inputs["prompt_index"])
        ref_chosen_logps = ref_completion_logps.index_select(0, chosen_idx)
        ref_rejected_logps = ref_completion_logps.index_select(0, rejected_idx)
    kl = (KL_logps - ref_KL_logps).mean().detach()
    kl = kl.mean().clamp(min=0)
    chosen_logratios = chosen_logps - ref_chosen_logps
    chosen_losses = 1 - F.sigmoid(BETA * (chosen_logratios - kl))
    BETA * chosen_logratios.detach()
    rejected_logratios = rejected_logps - ref_rejected_logps
    rejected_losses = 1 - F.sigmoid(BETA * (kl - rejected_logratios))
    BETA * rejected_logratios.detach()
    losses = torch.cat((1.0 * chosen_losses, 1.0 * rejected_losses), 0)
    _kto_metrics(shift_logits, inputs)
    return losses.nanmean()


def _kto_metrics(shift_logits, inputs) -> None:
    """KTOTrainer's logged metrics that allocate: entropy, the chosen and rejected rows' logits."""
    mask = inputs["completion_mask"][:, 1:]
    per_token_entropy = entropy_from_logits(shift_logits.detach())
    (per_token_entropy * mask).sum()
    chosen_logits = shift_logits.detach().index_select(0, inputs["chosen_idx"])
    rejected_logits = shift_logits.detach().index_select(0, inputs["rejected_idx"])
    c, r = inputs["chosen_completion_index"], inputs["rejected_completion_index"]
    chosen_logits[c[0], c[1]].mean(-1).sum()
    rejected_logits[r[0], r[1]].mean(-1).sum()
