"""Clipped policy loss for GRPO and its variants, trainer-agnostic.

The trainer never names an algorithm: it asks ``token_weights`` once per
rollout batch for per-token weights computed from the FULL batch mask, then
for each micro-batch of rows adds ``policy_loss(...)[0]``, which is
``sum(weights * per_token_loss)``. Because the normaliser is baked into the
weights, the summed loss and its gradients do not depend on micro-batch size.

Loss types (registry ``LOSS_TYPES``, extend with ``@register_loss_type``):

=========  ==========================================  ===========================
name       weight of a valid token of row i            matches
=========  ==========================================  ===========================
grpo       1 / (|o_i| * B)                             GRPO, DeepSeekMath Eq. 3
bnpo       1 / (valid tokens in this process's batch)  token mean, local batch
dapo       1 / (valid tokens in the global batch)      DAPO token-level loss
dr_grpo    1 / (max_completion_length * B)             Dr. GRPO constant normaliser
=========  ==========================================  ===========================

Importance sampling levels: ``"token"`` (GRPO/DAPO/Dr. GRPO) and
``"sequence"`` (GSPO, length-normalised sequence ratio).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import Tensor

from grpokit.algorithms.kl import k3_kl

IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")


def importance_ratio(logp: Tensor, old_logp: Tensor, mask: Tensor, level: str = "token") -> Tensor:
    """Importance ratio pi_theta / pi_old at token or sequence (GSPO) level.

    ``old_logp`` is treated as a constant (detached).

    Args:
        logp: (B, T) current policy log-probs of the sampled tokens.
        old_logp: (B, T) log-probs under the policy that generated the samples.
        mask: (B, T) 1 for completion tokens, 0 for padding.
        level: "token": exp(logp - old_logp) per token; "sequence":
            exp(mean over valid tokens of (logp - old_logp)), same on every token of the row.

    Returns:
        (B, T) ratios.

    Example (one row, log-ratios 0.1, 0.3 and a padded token):
        >>> logp, old = torch.tensor([[0.1, 0.3, 5.0]]), torch.zeros(1, 3)
        >>> importance_ratio(logp, old, torch.tensor([[1.0, 1.0, 0.0]]), "sequence")
        tensor([[1.2214, 1.2214, 1.2214]])
    """
    log_ratio = logp - old_logp.detach()  # (B, T)
    if level == "token":
        return torch.exp(log_ratio)  # (B, T)
    if level == "sequence":
        mask = mask.to(log_ratio.dtype)  # (B, T)
        seq_log_ratio = (log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1)  # (B,)
        return torch.exp(seq_log_ratio)[:, None].expand_as(log_ratio)  # (B, T)
    raise ValueError(f"unknown importance_sampling_level {level!r}; valid: {list(IMPORTANCE_SAMPLING_LEVELS)}")


def clipped_surrogate(ratio: Tensor, advantages: Tensor, epsilon_low: float, epsilon_high: float) -> Tensor:
    """PPO clipped surrogate as a per-token loss (to minimise).

    Args:
        ratio: (B, T) importance ratios.
        advantages: (B,) one advantage per completion, shared by its tokens, or (B, T) one per
            token (process supervision).
        epsilon_low: ratio is clipped below at 1 - epsilon_low.
        epsilon_high: ratio is clipped above at 1 + epsilon_high (DAPO clip-higher when > epsilon_low).

    Returns:
        (B, T) -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A).

    Example (A = +1: ratio 1.5 is clipped to 1.28; A = -1: ratio 0.5 is clipped to 0.8):
        >>> clipped_surrogate(torch.tensor([[1.5], [0.5]]), torch.tensor([1.0, -1.0]), 0.2, 0.28)
        tensor([[-1.2800],
                [ 0.8000]])
    """
    adv = per_token(advantages)  # (B, 1) or (B, T)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)  # (B, T)
    return -torch.min(ratio * adv, clipped * adv)  # (B, T)


def per_token(advantages: Tensor) -> Tensor:
    """Advantages shaped to broadcast against (B, T): (B,) becomes (B, 1); (B, T) stays.

    >>> per_token(torch.tensor([1.0, -1.0])).shape, per_token(torch.zeros(2, 3)).shape
    (torch.Size([2, 1]), torch.Size([2, 3]))
    """
    return advantages[:, None] if advantages.dim() == 1 else advantages


class LossTypeFn(Protocol):
    def __call__(self, mask: Tensor, *, max_completion_length: int | None, global_num_tokens: float | None) -> Tensor: ...


LOSS_TYPES: dict[str, LossTypeFn] = {}


def register_loss_type(name: str) -> Callable[[LossTypeFn], LossTypeFn]:
    """Decorator adding a token-weight normaliser to ``LOSS_TYPES`` under ``name``.

    The function maps a float mask (B, T) to weights (B, T), keyword arguments
    ``max_completion_length`` and ``global_num_tokens``.

    Raises:
        ValueError: if ``name`` is already registered.
    """

    def decorator(fn: LossTypeFn) -> LossTypeFn:
        if name in LOSS_TYPES:
            raise ValueError(f"loss_type {name!r} is already registered")
        LOSS_TYPES[name] = fn
        return fn

    return decorator


@register_loss_type("grpo")
def _grpo_weights(mask: Tensor, *, max_completion_length: int | None, global_num_tokens: float | None) -> Tensor:
    lengths = mask.sum(dim=1, keepdim=True).clamp(min=1)  # (B, 1); empty rows have mask 0 anyway
    return mask / (lengths * mask.shape[0])  # (B, T)


@register_loss_type("bnpo")
def _bnpo_weights(mask: Tensor, *, max_completion_length: int | None, global_num_tokens: float | None) -> Tensor:
    return mask / mask.sum().clamp(min=1)  # (B, T)


@register_loss_type("dapo")
def _dapo_weights(mask: Tensor, *, max_completion_length: int | None, global_num_tokens: float | None) -> Tensor:
    total = mask.sum() if global_num_tokens is None else torch.as_tensor(global_num_tokens, dtype=mask.dtype)
    return mask / total.clamp(min=1)  # (B, T)


@register_loss_type("dr_grpo")
def _dr_grpo_weights(mask: Tensor, *, max_completion_length: int | None, global_num_tokens: float | None) -> Tensor:
    if max_completion_length is None or max_completion_length < 1:
        raise ValueError(f"loss_type 'dr_grpo' needs max_completion_length >= 1, got {max_completion_length!r}")
    return mask / (max_completion_length * mask.shape[0])  # (B, T)


def token_weights(
    mask: Tensor,
    loss_type: str,
    max_completion_length: int | None = None,
    global_num_tokens: float | None = None,
) -> Tensor:
    """Per-token weights so that batch loss = sum(per_token_loss * weights).

    Compute them once on the FULL rollout batch, then slice rows per micro-batch.

    Args:
        mask: (B, T) completion mask (bool or float).
        loss_type: "grpo" (GRPO), "bnpo", "dapo" (DAPO) or "dr_grpo" (Dr. GRPO); see module docstring.
        max_completion_length: generation budget L, required by "dr_grpo".
        global_num_tokens: valid tokens summed over all processes, used by "dapo"
            (default: the local ``mask.sum()``).

    Returns:
        (B, T) float weights, 0 on padding.

    Example (one group of 3 completions with 2, 1 and 2 tokens):
        >>> m = torch.tensor([[1, 1], [1, 0], [1, 1]])
        >>> token_weights(m, "grpo")
        tensor([[0.1667, 0.1667],
                [0.3333, 0.0000],
                [0.1667, 0.1667]])
        >>> token_weights(m, "dapo")
        tensor([[0.2000, 0.2000],
                [0.2000, 0.0000],
                [0.2000, 0.2000]])
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; valid: {sorted(LOSS_TYPES)}")
    mask = mask if mask.is_floating_point() else mask.float()  # (B, T)
    fn = LOSS_TYPES[loss_type]
    return fn(mask, max_completion_length=max_completion_length, global_num_tokens=global_num_tokens)


@dataclass
class PolicyLossInputs:
    """Per-token streams for one (micro-)batch of rows."""

    logp: Tensor
    """(B, T) current policy log-probs of the sampled tokens (requires grad)."""
    old_logp: Tensor
    """(B, T) log-probs under the sampling policy (treated as constant)."""
    advantages: Tensor
    """(B,) one advantage per completion, or (B, T) one per token (process supervision)."""
    mask: Tensor
    """(B, T) float completion mask."""
    weights: Tensor
    """(B, T) rows of ``token_weights`` computed on the full batch."""
    ref_logp: Tensor | None = None
    """(B, T) reference-model log-probs, or None when there is no KL term."""


def policy_loss(
    inputs: PolicyLossInputs,
    *,
    epsilon_low: float,
    epsilon_high: float,
    beta: float = 0.0,
    importance_sampling_level: str = "token",
    use_bias_correction_kl: bool = False,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted clipped-surrogate loss plus optional k3 KL penalty.

    loss = sum(weights * (clipped_surrogate + beta * kl)); the KL term is used only when
    beta > 0 and ``ref_logp`` is given. Which algorithm this is depends on the weights:
    loss_type "grpo" = GRPO (DeepSeekMath), "dapo" = DAPO (with epsilon_high > epsilon_low,
    beta = 0), "dr_grpo" = Dr. GRPO (with advantages scale "none", beta = 0);
    importance_sampling_level "sequence" = GSPO.

    With ``use_bias_correction_kl`` (TRL's name; DeepSeek-V3.2) the per-token k3 value is
    multiplied by the importance ratio, gradient included, so the KL gradient is the unbiased
    reverse-KL gradient for samples from the old policy: on-policy (ratio 1) the value is
    unchanged but d(kl)/d(logp) becomes ``logp - ref_logp`` instead of ``1 - ref_p/p``.

    Args:
        inputs: see ``PolicyLossInputs``.
        epsilon_low, epsilon_high: clip range [1 - epsilon_low, 1 + epsilon_high].
        beta: KL coefficient.
        importance_sampling_level: "token" or "sequence".
        use_bias_correction_kl: multiply the KL term by the importance ratio.

    Returns:
        (loss scalar, metrics). Metrics are detached so the trainer can combine micro-batches:
        sums ``tokens``, ``kl_sum`` (the KL term as used, 0 without ref_logp) and the clip
        counts with TRL's definitions, over ``clip_units_sum`` units (valid tokens at token
        level, sequences at sequence level): ``clip_low_sum`` (ratio < 1 - eps_low and A < 0),
        ``clip_high_sum`` (ratio > 1 + eps_high and A > 0), ``clip_region_sum`` (either); and
        ``clip_low_min`` / ``clip_high_max``, the smallest / largest per-sequence clipped
        fraction.

    Example (one group of 3 one-token completions, on-policy so ratio = 1: the loss is
    -sum(weights * A) = -(1.0 - 0.5 - 0.8) / 3 = 0.1, and its gradient is -A / 3 per token):
        >>> lp = torch.zeros(3, 1, requires_grad=True)
        >>> m = torch.ones(3, 1)
        >>> x = PolicyLossInputs(lp, lp.detach(), torch.tensor([1.0, -0.5, -0.8]), m, token_weights(m, "grpo"))
        >>> loss, metrics = policy_loss(x, epsilon_low=0.2, epsilon_high=0.2)
        >>> loss.backward()
        >>> round(loss.item(), 6), [round(g, 4) for g in lp.grad.flatten().tolist()], metrics["tokens"].item()
        (0.1, [-0.3333, 0.1667, 0.2667], 3.0)
    """
    mask = inputs.mask.to(inputs.logp.dtype)  # (B, T)
    ratio = importance_ratio(inputs.logp, inputs.old_logp, mask, importance_sampling_level)  # (B, T)
    per_token = clipped_surrogate(ratio, inputs.advantages, epsilon_low, epsilon_high)  # (B, T)
    kl = k3_kl(inputs.logp, inputs.ref_logp) if inputs.ref_logp is not None else None  # (B, T)
    if kl is not None and use_bias_correction_kl:
        kl = kl * ratio  # (B, T), the ratio keeps its gradient (TRL: per_token_kl * coef_1)
    if kl is not None and beta > 0:
        per_token = per_token + beta * kl  # (B, T)
    loss = (per_token * inputs.weights).sum()  # ()
    metrics = clip_metrics(ratio.detach(), inputs.advantages.detach(), mask, epsilon_low, epsilon_high,
                           sequence_level=importance_sampling_level == "sequence")
    metrics["tokens"] = mask.sum()
    metrics["kl_sum"] = (kl.detach() * mask).sum() if kl is not None else mask.new_zeros(())
    return loss, metrics


def clip_metrics(ratio: Tensor, advantages: Tensor, mask: Tensor, epsilon_low: float,
                 epsilon_high: float, sequence_level: bool = False) -> dict[str, Tensor]:
    """How often the surrogate is clipped, as TRL counts it: low = ratio below 1 - eps_low with
    A < 0, high = ratio above 1 + eps_high with A > 0, over valid tokens, or over sequences at
    sequence level (one ratio per sequence); and the per-sequence clipped fractions' extremes.

    Example (two completions of 2 tokens; row 0's second token is clipped high; at sequence
    level each row is one unit):
        >>> ratio, m = torch.tensor([[1.0, 1.5], [1.0, 1.0]]), torch.ones(2, 2)
        >>> t = clip_metrics(ratio, torch.tensor([1.0, 1.0]), m, 0.2, 0.2)
        >>> t["clip_high_sum"].item(), t["clip_units_sum"].item(), t["clip_high_max"].item()
        (1.0, 4.0, 0.5)
        >>> s = clip_metrics(torch.tensor([[1.5, 1.5], [1.0, 1.0]]), torch.tensor([1.0, 1.0]), m, 0.2, 0.2, True)
        >>> s["clip_high_sum"].item(), s["clip_units_sum"].item()
        (1.0, 2.0)
    """
    valid = mask > 0  # (B, T)
    adv = per_token(advantages)  # (B, 1) or (B, T)
    low = (ratio < 1 - epsilon_low) & (adv < 0) & valid  # (B, T)
    high = (ratio > 1 + epsilon_high) & (adv > 0) & valid  # (B, T)
    lengths = mask.sum(-1).clamp(min=1)  # (B,)
    if sequence_level:  # every valid token of a row has the row's ratio: count rows
        units = mask.new_tensor(float(mask.shape[0]))
        low_rows, high_rows = low.any(-1).to(mask.dtype), high.any(-1).to(mask.dtype)  # (B,)
        counts = (low_rows.sum(), high_rows.sum(), (low_rows.bool() | high_rows.bool()).sum().to(mask.dtype))
        low_frac, high_frac = low_rows, high_rows
    else:
        units = mask.sum()
        counts = (low.sum().to(mask.dtype), high.sum().to(mask.dtype), (low | high).sum().to(mask.dtype))
        low_frac, high_frac = low.sum(-1) / lengths, high.sum(-1) / lengths  # (B,)
    return {
        "clip_units_sum": units,
        "clip_low_sum": counts[0], "clip_high_sum": counts[1], "clip_region_sum": counts[2],
        "clip_low_min": low_frac.min().to(mask.dtype), "clip_high_max": high_frac.max().to(mask.dtype),
    }
