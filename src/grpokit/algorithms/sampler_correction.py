"""Truncated importance sampling (TIS; Yao et al. 2025, "Your efficient RL framework secretly
brings you off-policy RL training") for samples whose log-probs come from another engine or an
older policy.

A fast sampler (vLLM, a bf16 kernel, a different batch shape) assigns the sampled tokens
slightly different probabilities than the trainer's forward pass, and an asynchronous sampler
(``rollout.max_staleness``) samples with weights a step or more old, so the samples come from
pi_sampler, not pi_old. Each token's loss is weighted by the ratio r = pi_old / pi_sampler
(detached), bounded so its variance stays small. Four modes (TRL's
``vllm_importance_sampling_mode``):

- ``token_truncate``: w_t = min(r_t, cap);
- ``token_mask``: w_t = r_t, or 0 where r_t > cap;
- ``sequence_truncate``: one ratio per completion, r = prod_t r_t, w = min(r, cap) on every token;
- ``sequence_mask``: w = r, or 0 for the whole completion where r > cap.

:func:`mismatch_stats` measures how far the two engines are apart, whatever the mode.
"""

from __future__ import annotations

import torch
from torch import Tensor

MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


def truncated_importance_weights(old_logp: Tensor, sampler_logp: Tensor, mask: Tensor, cap: float,
                                 mode: str = "token_truncate") -> Tensor:
    """The sampler correction's weights ``(B, T)`` (detached) on valid tokens, 1 on padding.

    Example (the trainer finds the first token likelier than the sampler did, the second much
    likelier: its ratio 3 is truncated to the cap of 2, or masked; the sequence's ratio is
    1.25 · 3 = 3.75):
        >>> old, sampler = torch.log(torch.tensor([[0.5, 0.9]])), torch.log(torch.tensor([[0.4, 0.3]]))
        >>> truncated_importance_weights(old, sampler, torch.ones(1, 2), cap=2.0)
        tensor([[1.2500, 2.0000]])
        >>> truncated_importance_weights(old, sampler, torch.ones(1, 2), cap=2.0, mode="token_mask")
        tensor([[1.2500, 0.0000]])
        >>> truncated_importance_weights(old, sampler, torch.ones(1, 2), cap=5.0, mode="sequence_truncate")
        tensor([[3.7500, 3.7500]])
        >>> truncated_importance_weights(old, sampler, torch.ones(1, 2), cap=2.0, mode="sequence_mask")
        tensor([[0., 0.]])
    """
    if cap <= 0:
        raise ValueError(f"the truncated importance-sampling cap must be > 0, got {cap}")
    if mode not in MODES:
        raise ValueError(f"unknown importance-sampling mode {mode!r}; expected one of {', '.join(MODES)}")
    valid = mask > 0
    log_ratio = torch.where(valid, (old_logp - sampler_logp).detach(), torch.zeros_like(old_logp))  # (B, T)
    if mode.startswith("sequence"):
        log_ratio = log_ratio.sum(1, keepdim=True).expand_as(old_logp)  # (B, T): the sequence's on every token
    ratio = torch.exp(log_ratio)
    weights = torch.clamp(ratio, max=cap) if mode.endswith("truncate") else ratio.masked_fill(ratio > cap, 0.0)
    return torch.where(valid, weights, torch.ones_like(weights))


def mismatch_stats(old_logp: Tensor, sampler_logp: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Sums and extremes of the gap between the trainer's and the sampler's log-probs on valid
    tokens: ``mismatch_abs_sum`` (sum of |Δ log p|), ``mismatch_ratio_max`` and
    ``mismatch_ratio_min`` (of pi_old / pi_sampler per token), for the step's metrics.

    >>> old, sampler = torch.log(torch.tensor([[0.5, 0.9]])), torch.log(torch.tensor([[0.4, 0.3]]))
    >>> {k: round(float(v), 4) for k, v in mismatch_stats(old, sampler, torch.tensor([[1.0, 0.0]])).items()}
    {'mismatch_abs_sum': 0.2231, 'mismatch_ratio_max': 1.25, 'mismatch_ratio_min': 1.25}
    """
    valid = mask > 0
    delta = (old_logp - sampler_logp).detach()[valid]
    if delta.numel() == 0:
        delta = delta.new_zeros(1)
    ratio = delta.exp()
    return {"mismatch_abs_sum": delta.abs().sum(), "mismatch_ratio_max": ratio.max(), "mismatch_ratio_min": ratio.min()}
