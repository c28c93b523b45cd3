"""PPO's per-token math (ALGORITHMS.md §3.6): KL-shaped rewards, GAE, clipped losses, whitening.

Every tensor is ``(N, T)``: N completions, T completion positions, right-padded, with ``mask``
1 on generated tokens (EOS included) and 0 on padding. Position t holds the log-prob of
completion token t, the value V(s_t) of the state *before* emitting it, and the reward for
emitting it. The state after the last real token is terminal (its value is 0).

The conventions follow TRL's ``PPOTrainer`` (itself after InstructGPT and OpenAI's
``lm-human-preferences``): per-token k1 KL in the reward with the sequence score added at the
last token (DeepSeekMath Eq. 2), GAE over completion tokens (PPO Eqs. 11-12), the value loss
clipped around the rollout's values, token means over the batch, Bessel-corrected variances.
"""

from __future__ import annotations

import torch
from torch import Tensor

from grpokit.algorithms.losses import clipped_surrogate


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over positions where ``mask`` is 1.

    >>> masked_mean(torch.tensor([[1.0, 2.0, 9.0]]), torch.tensor([[1, 1, 0]]))
    tensor(1.5000)
    """
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def masked_var(values: Tensor, mask: Tensor) -> Tensor:
    """Bessel-corrected variance of ``values`` over positions where ``mask`` is 1.

    >>> masked_var(torch.tensor([[1.0, 2.0, 3.0, 9.0]]), torch.tensor([[1, 1, 1, 0]]))
    tensor(1.)
    """
    mask = mask.to(values.dtype)
    count = mask.sum()
    centered = (values - masked_mean(values, mask)) * mask
    return (centered**2).sum() / (count - 1).clamp(min=1)


def masked_whiten(values: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """``(x - mean) / sqrt(var + eps)`` over the masked positions; padding becomes 0.

    Mean 2 and (Bessel) variance 1 over the three real tokens:

    >>> masked_whiten(torch.tensor([[1.0, 2.0, 3.0, 9.0]]), torch.tensor([[1, 1, 1, 0]]))
    tensor([[-1.,  0.,  1.,  0.]])
    """
    mask = mask.to(values.dtype)
    whitened = (values - masked_mean(values, mask)) * torch.rsqrt(masked_var(values, mask) + eps)
    return whitened * mask


def last_token_index(mask: Tensor) -> Tensor:
    """Index of each row's last real token ``(N,)`` (0 for a row with none).

    >>> last_token_index(torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])).tolist()
    [2, 0]
    """
    return (mask.sum(1).long() - 1).clamp(min=0)


def kl_shaped_rewards(score: Tensor, logp: Tensor, ref_logp: Tensor, mask: Tensor,
                      kl_coef: float) -> Tensor:
    """Per-token rewards ``-kl_coef * (logp - ref_logp)``, plus ``score`` at the last real token.

    Args:
        score: (N,) the sequence reward of each completion.
        logp, ref_logp: (N, T) log-probs of the sampled tokens under the sampling policy and
            the frozen reference (k1 KL estimate per token, InstructGPT / TRL).
        mask: (N, T) completion mask.
        kl_coef: the KL coefficient β.

    Returns:
        (N, T) rewards, 0 on padding.

    Example (KL 0.5, 0, 0.5 on three tokens, β = 0.1, score 1 at the third token):
        >>> r = kl_shaped_rewards(torch.tensor([1.0]), torch.tensor([[-1.0, -2.0, -0.5, 0.0]]),
        ...                       torch.tensor([[-1.5, -2.0, -1.0, 0.0]]),
        ...                       torch.tensor([[1, 1, 1, 0]]), kl_coef=0.1)
        >>> [round(x, 6) + 0.0 for x in r[0].tolist()]
        [-0.05, 0.0, 0.95, 0.0]
    """
    mask = mask.to(logp.dtype)
    rewards = -kl_coef * (logp - ref_logp) * mask  # (N, T)
    rows = torch.arange(rewards.shape[0])
    has_tokens = (mask.sum(1) > 0).to(rewards.dtype)  # (N,)
    rewards[rows, last_token_index(mask)] += score.to(rewards.dtype) * has_tokens
    return rewards


def gae_advantages(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0,
                   lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimates and value targets, by a reverse scan over tokens.

    ``delta_t = r_t + gamma * V(s_{t+1}) - V(s_t)`` and ``A_t = delta_t + gamma * lam *
    A_{t+1}``, where the state after the last real token is terminal (V = 0, A = 0); the value
    target is ``R_t = A_t + V(s_t)``. Padding gets 0 in both and never leaks into real tokens.

    Args:
        rewards: (N, T) per-token rewards (``kl_shaped_rewards``).
        values: (N, T) V(s_t) from the value model at sampling time.
        mask: (N, T) completion mask.
        gamma, lam: discount and GAE λ.

    Returns:
        (advantages, returns), both (N, T).

    Example (rewards 0, 0, 1; values 0.5, 0.6, 0.7; gamma 1, lam 0.95; then padding):
        deltas are 0.1, 0.1, 0.3, so A_2 = 0.3, A_1 = 0.1 + 0.95·0.3 = 0.385,
        A_0 = 0.1 + 0.95·0.385 = 0.46575, and R = A + V = 0.96575, 0.985, 1.0.

        >>> adv, ret = gae_advantages(torch.tensor([[0.0, 0.0, 1.0, 0.0]]),
        ...                           torch.tensor([[0.5, 0.6, 0.7, 5.0]]),
        ...                           torch.tensor([[1, 1, 1, 0]]), gamma=1.0, lam=0.95)
        >>> [round(a, 5) for a in adv[0].tolist()], [round(r, 5) for r in ret[0].tolist()]
        ([0.46575, 0.385, 0.3, 0.0], [0.96575, 0.985, 1.0, 0.0])
    """
    mask = mask.to(values.dtype)
    rewards, values = rewards * mask, values * mask  # (N, T)
    end = torch.zeros_like(values[:, :1])  # (N, 1): nothing follows the last position
    next_live = torch.cat([mask[:, 1:], end], 1)  # (N, T): is s_{t+1} a real state?
    next_values = torch.cat([values[:, 1:], end], 1)  # (N, T): V(s_{t+1}), 0 when terminal
    deltas = rewards + gamma * next_values - values  # (N, T)
    advantages = torch.zeros_like(values)  # (N, T)
    following = end[:, 0]  # A_{t+1}, (N,)
    for t in reversed(range(values.shape[1])):
        following = deltas[:, t] + gamma * lam * next_live[:, t] * following
        advantages[:, t] = following
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def ppo_policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor,
                    cliprange: float) -> tuple[Tensor, Tensor]:
    """Clipped surrogate with per-token advantages, as a token mean; and the clipped fraction.

    ``-min(ratio * A, clip(ratio, 1 - c, 1 + c) * A)`` per token, ratio ``exp(logp - old)``.

    Example (ratio 1.5 with A = 1 is clipped to 1.2; ratio 1 with A = -0.5 is not):
        >>> loss, clipped = ppo_policy_loss(torch.log(torch.tensor([[1.5, 1.0]])),
        ...                                 torch.zeros(1, 2), torch.tensor([[1.0, -0.5]]),
        ...                                 torch.ones(1, 2), cliprange=0.2)
        >>> round(loss.item(), 6), clipped.item()  # (-1.2 + 0.5) / 2; one token of two clipped
        (-0.35, 0.5)
    """
    ratio = torch.exp(logp - old_logp.detach())  # (N, T)
    per_token = clipped_surrogate(ratio.reshape(-1, 1), advantages.reshape(-1), cliprange,
                                  cliprange).view_as(ratio)  # (N, T)
    unclipped = -ratio * advantages  # (N, T)
    clipped = (per_token > unclipped).to(ratio.dtype)  # the clip bound is the active one
    return masked_mean(per_token, mask), masked_mean(clipped.detach(), mask)


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor,
               clip_range_value: float) -> tuple[Tensor, Tensor]:
    """``0.5 * max((V - R)^2, (clip(V, V_old ± c) - R)^2)`` as a token mean; and the clipped fraction.

    The clipping around the rollout's values is not in the PPO paper; it is OpenAI baselines'
    and TRL's (ALGORITHMS.md §3.6).

    Example (V = 1 with V_old = 0.5 is clipped to 0.7: 0.5·max(1, 1.69); the other token is
    inside the range: 0.5·0.01):
        >>> loss, clipped = value_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.0]]),
        ...                            torch.tensor([[2.0, 0.1]]), torch.ones(1, 2), 0.2)
        >>> round(loss.item(), 6), clipped.item()  # 0.5 · (1.69 + 0.01) / 2
        (0.425, 0.5)
    """
    old_values = old_values.detach()
    clipped_values = torch.clamp(values, old_values - clip_range_value,
                                 old_values + clip_range_value)  # (N, T)
    unclipped_loss = (values - returns) ** 2  # (N, T)
    clipped_loss = (clipped_values - returns) ** 2  # (N, T)
    loss = 0.5 * masked_mean(torch.max(unclipped_loss, clipped_loss), mask)
    clipped = (clipped_loss > unclipped_loss).to(values.dtype).detach()
    return loss, masked_mean(clipped, mask)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """``1 - Var(R - V) / Var(R)`` over real tokens: 1 is a perfect value model, 0 a constant one.

    >>> explained_variance(torch.tensor([[1.0, 2.0, 2.0]]), torch.tensor([[1.0, 2.0, 3.0]]),
    ...                    torch.ones(1, 3))
    0.6666666865348816
    """
    spread = masked_var(returns, mask)
    if spread <= 0:
        return float("nan")
    return float(1 - masked_var(returns - values, mask) / spread)
