"""What every policy loss receives and returns, the registry they are named in, and the parts
they share: the importance ratio, the KL penalty, the truncated importance-sampling weights and
the clip statistics.

A policy loss is ``fn(inputs: PolicyLossInputs, settings: LossSettings) -> (per_token_loss,
metrics)``: ``per_token_loss`` is ``(B, T)`` (padding is zeroed later by the aggregation's
weights) and ``metrics`` holds detached sums that add up over micro-batches. Register one with
``@register_policy_loss("name")`` and select it with ``policy_loss: name``, or name it by
import path (``policy_loss: my_package.module:my_loss``). :func:`finish` adds what every loss
shares (sampler correction, KL penalty, metrics), so a new loss is its surrogate and one call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from grpokit.algorithms.kl import k3_kl
from grpokit.algorithms.registry import Registry

POLICY_LOSSES = Registry("policy loss", "policy_loss")
register_policy_loss = POLICY_LOSSES.register


@dataclass
class PolicyLossInputs:
    """Per-token streams for one (micro-)batch of rows, all ``(B, T)``."""

    logp: Tensor
    """Current policy log-probs of the sampled tokens (requires grad)."""
    old_logp: Tensor
    """Log-probs under the policy before this batch's updates (treated as constant)."""
    advantages: Tensor
    """One advantage per token (an outcome advantage repeats over its completion's tokens)."""
    mask: Tensor
    """Float, 1 on the tokens that enter the loss."""
    ref_logp: Tensor | None = None
    """Reference-model log-probs, or None when there is no KL term."""
    sampler_weights: Tensor | None = None
    """Truncated importance-sampling weights pi_old / pi_sampler (``sampler_correction``), or None."""


@dataclass(frozen=True)
class LossSettings:
    """The loss's hyper-parameters, from the trainer's config."""

    epsilon_low: float
    """Ratios below 1 - epsilon_low are clipped (for advantages < 0)."""
    epsilon_high: float
    """Ratios above 1 + epsilon_high are clipped (DAPO's clip-higher when > epsilon_low)."""
    beta: float = 0.0
    """KL coefficient; the KL term is added when beta > 0 and ``ref_logp`` is given."""
    use_bias_correction_kl: bool = False
    """Multiply the KL term by the importance ratio, gradient included (TRL's name)."""


def sequence_log_ratio(logp: Tensor, old_logp: Tensor, mask: Tensor) -> Tensor:
    """Length-normalised sequence log-ratio ``(B, 1)``: mean over valid tokens of logp - old.

    >>> sequence_log_ratio(torch.tensor([[0.1, 0.3, 5.0]]), torch.zeros(1, 3), torch.tensor([[1.0, 1.0, 0.0]]))
    tensor([[0.2000]])
    """
    mask = mask.to(logp.dtype)
    return (((logp - old_logp.detach()) * mask).sum(-1) / mask.sum(-1).clamp(min=1))[:, None]


def clipped_surrogate(ratio: Tensor, advantages: Tensor, epsilon_low: float, epsilon_high: float) -> Tensor:
    """PPO's clipped surrogate as a per-token loss (to minimise).

    ``-min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A)``, all ``(B, T)``.

    Example (A = +1: ratio 1.5 is clipped to 1.28; A = -1: ratio 0.5 is clipped to 0.8):
        >>> clipped_surrogate(torch.tensor([[1.5], [0.5]]), torch.tensor([[1.0], [-1.0]]), 0.2, 0.28)
        tensor([[-1.2800],
                [ 0.8000]])
    """
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)  # (B, T)
    return -torch.min(ratio * advantages, clipped * advantages)  # (B, T)


def finish(surrogate: Tensor, ratio: Tensor, inputs: PolicyLossInputs, settings: LossSettings,
           sequence_level: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
    """The loss every variant shares after its surrogate: times the sampler weights, plus
    ``beta`` times the k3 KL (times ``ratio`` with ``use_bias_correction_kl``); and its metrics.

    Returns:
        (per-token loss (B, T), metrics): sums ``tokens``, ``kl_sum`` (the KL term as used, 0
        without ``ref_logp``) and the clip counts of :func:`clip_metrics`, which count
        sequences instead of tokens when ``sequence_level``.
    """
    mask = inputs.mask.to(inputs.logp.dtype)  # (B, T)
    per_token = surrogate if inputs.sampler_weights is None else surrogate * inputs.sampler_weights
    kl = k3_kl(inputs.logp, inputs.ref_logp) if inputs.ref_logp is not None else None  # (B, T)
    if kl is not None and settings.use_bias_correction_kl:
        kl = kl * ratio  # (B, T), the ratio keeps its gradient (TRL: per_token_kl * coef_1)
    if kl is not None and settings.beta > 0:
        per_token = per_token + settings.beta * kl  # (B, T)
    metrics = clip_metrics(ratio.detach(), inputs.advantages.detach(), mask, settings.epsilon_low,
                           settings.epsilon_high, sequence_level)
    metrics["tokens"] = mask.sum()
    if inputs.sampler_weights is not None:  # how far the sampler's probabilities were from the policy's
        metrics["sampler_weight_max"] = (inputs.sampler_weights * mask).max()
    metrics["kl_sum"] = (kl.detach() * mask).sum() if kl is not None else mask.new_zeros(())
    return per_token, metrics


def clip_metrics(ratio: Tensor, advantages: Tensor, mask: Tensor, epsilon_low: float,
                 epsilon_high: float, sequence_level: bool = False) -> dict[str, Tensor]:
    """How often the surrogate is clipped, as TRL counts it: low = ratio below 1 - eps_low with
    A < 0, high = ratio above 1 + eps_high with A > 0, over valid tokens, or over sequences at
    sequence level (one ratio per sequence); and the per-sequence clipped fractions' extremes.

    Example (two completions of 2 tokens; row 0's second token is clipped high; at sequence
    level each row is one unit):
        >>> ratio, m, a = torch.tensor([[1.0, 1.5], [1.0, 1.0]]), torch.ones(2, 2), torch.ones(2, 2)
        >>> t = clip_metrics(ratio, a, m, 0.2, 0.2)
        >>> t["clip_high_sum"].item(), t["clip_units_sum"].item(), t["clip_high_max"].item()
        (1.0, 4.0, 0.5)
        >>> s = clip_metrics(torch.tensor([[1.5, 1.5], [1.0, 1.0]]), a, m, 0.2, 0.2, True)
        >>> s["clip_high_sum"].item(), s["clip_units_sum"].item()
        (1.0, 2.0)
    """
    valid = mask > 0  # (B, T)
    low = (ratio < 1 - epsilon_low) & (advantages < 0) & valid  # (B, T)
    high = (ratio > 1 + epsilon_high) & (advantages > 0) & valid  # (B, T)
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
