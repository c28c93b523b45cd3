"""Truncated importance sampling (TIS; Yao et al. 2025, "Your efficient RL framework secretly
brings you off-policy RL training") for samples whose log-probs come from another engine.

A fast sampler (vLLM, a bf16 kernel, a different batch shape) assigns the sampled tokens
slightly different probabilities than the trainer's forward pass, so the samples come from
pi_sampler, not pi_old. Each token's loss is weighted by the truncated ratio

    w_t = min(pi_old(o_t) / pi_sampler(o_t), cap)

(detached), which corrects the gradient's bias while the cap bounds its variance. TRL calls
this ``vllm_importance_sampling_mode="token_truncate"`` with ``vllm_importance_sampling_clip_max``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def truncated_importance_weights(old_logp: Tensor, sampler_logp: Tensor, mask: Tensor, cap: float) -> Tensor:
    """``min(exp(old_logp - sampler_logp), cap)`` on valid tokens, 1 on padding; ``(B, T)``, detached.

    Example (the trainer finds the first token likelier than the sampler did, the second much
    likelier, which the cap of 2 truncates):
        >>> old, sampler = torch.log(torch.tensor([[0.5, 0.9]])), torch.log(torch.tensor([[0.4, 0.3]]))
        >>> truncated_importance_weights(old, sampler, torch.ones(1, 2), cap=2.0)
        tensor([[1.2500, 2.0000]])
    """
    if cap <= 0:
        raise ValueError(f"the truncated importance-sampling cap must be > 0, got {cap}")
    ratio = torch.exp((old_logp - sampler_logp).detach())  # (B, T)
    return torch.where(mask > 0, torch.clamp(ratio, max=cap), torch.ones_like(ratio))
