"""Generalised advantage estimation for PPO (Schulman et al. 2016) with RLHF's KL-shaped rewards.

Every tensor is ``(N, T)``: N completions, T completion positions, right-padded, with ``mask``
1 on generated tokens (EOS included) and 0 on padding. Position t holds the log-prob of
completion token t, the value V(s_t) of the state *before* emitting it, and the reward for
emitting it. The state after the last real token is terminal (its value is 0).

The conventions follow TRL's ``PPOTrainer`` (after InstructGPT and OpenAI's
``lm-human-preferences``): per-token k1 KL in the reward with the sequence score added at the
last token (DeepSeekMath Eq. 2), GAE over completion tokens (PPO Eqs. 11-12). The value
targets are ``advantages + values``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from grpokit.algorithms.estimators.estimator_inputs import AdvantageInputs, register_advantage_estimator


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


@register_advantage_estimator("gae")
def gae_estimator(inputs: AdvantageInputs, config) -> Tensor:
    """GAE over KL-shaped rewards (``config.kl_coef``, ``config.gamma``, ``config.lam``); needs
    ``values`` and ``sampling_logp`` (and ``ref_logp`` when ``kl_coef > 0``)."""
    if inputs.values is None or inputs.sampling_logp is None:
        raise ValueError("advantage_estimator 'gae' needs a value model's values (the PPO trainer)")
    ref_logp = inputs.sampling_logp if inputs.ref_logp is None else inputs.ref_logp
    token_rewards = kl_shaped_rewards(inputs.rewards, inputs.sampling_logp, ref_logp, inputs.mask,
                                      config.kl_coef)
    return gae_advantages(token_rewards, inputs.values, inputs.mask, config.gamma, config.lam)[0]
