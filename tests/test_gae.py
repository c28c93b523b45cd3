"""PPO's per-token math with hand-computed numbers: GAE, value loss, KL shaping, whitening."""

import pytest
import torch

from grpokit.algorithms import POLICY_LOSSES, LossSettings, PolicyLossInputs, token_weights
from grpokit.algorithms.estimators.gae import gae_advantages, kl_shaped_rewards
from grpokit.algorithms.masked import masked_whiten
from grpokit.algorithms.value import explained_variance, value_loss


def rounded(t, places=5):
    return [[round(x, places) + 0.0 for x in row] for row in t.tolist()]


def test_gae_three_tokens_gamma_1_lambda_095_by_hand():
    # deltas: 0 + 0.6 - 0.5 = 0.1, 0 + 0.7 - 0.6 = 0.1, 1 + 0 - 0.7 = 0.3 (terminal after)
    # A2 = 0.3, A1 = 0.1 + 0.95 * 0.3 = 0.385, A0 = 0.1 + 0.95 * 0.385 = 0.46575
    adv, ret = gae_advantages(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.6, 0.7]]),
                              torch.ones(1, 3), gamma=1.0, lam=0.95)
    assert rounded(adv) == [[0.46575, 0.385, 0.3]]
    assert rounded(ret) == [[0.96575, 0.985, 1.0]]


def test_gae_with_discount_by_hand():
    # delta1 = 2 - 0.5 = 1.5; delta0 = 0 + 0.9 * 0.5 - 1 = -0.55; A0 = -0.55 + 0.9 * 0.5 * 1.5
    adv, ret = gae_advantages(torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0, 0.5]]),
                              torch.ones(1, 2), gamma=0.9, lam=0.5)
    assert rounded(adv) == [[0.125, 1.5]]
    assert rounded(ret) == [[1.125, 2.0]]


def test_gae_lambda_1_is_the_return_to_go_and_lambda_0_the_td_error():
    rewards, values = torch.tensor([[0.1, 0.2, 0.7]]), torch.tensor([[0.3, 0.2, 0.1]])
    _, ret = gae_advantages(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    assert rounded(ret) == [[1.0, 0.9, 0.7]]  # sum of the rewards from t on
    adv, _ = gae_advantages(rewards, values, torch.ones(1, 3), gamma=1.0, lam=0.0)
    assert rounded(adv) == [[0.0, 0.1, 0.6]]  # r_t + V(s_{t+1}) - V(s_t), terminal V = 0


def test_gae_padding_neither_leaks_nor_gets_advantage():
    # row 0 has 2 real tokens, row 1 has 3; garbage on padding must change nothing
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    rewards = torch.tensor([[0.0, 1.0, 50.0], [0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, -9.0], [0.5, 0.6, 0.7]])
    adv, ret = gae_advantages(rewards, values, mask, gamma=1.0, lam=0.95)
    # row 0: delta1 = 1 - 0.6 = 0.4, delta0 = 0.6 - 0.5 = 0.1, A0 = 0.1 + 0.95 * 0.4 = 0.48
    assert rounded(adv) == [[0.48, 0.4, 0.0], [0.46575, 0.385, 0.3]]
    assert rounded(ret) == [[0.98, 1.0, 0.0], [0.96575, 0.985, 1.0]]


def test_value_loss_takes_the_larger_of_clipped_and_unclipped_by_hand():
    values = torch.tensor([[1.0, 0.0, 0.3, 7.0]], requires_grad=True)
    old = torch.tensor([[0.5, 0.0, 0.0, 0.0]])
    returns = torch.tensor([[2.0, 0.1, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, clipped = value_loss(values, old, returns, mask, clip_range_value=0.2)
    # token 0: clip(1, 0.3, 0.7) = 0.7, max((1-2)^2, (0.7-2)^2) = 1.69 (clipped branch)
    # token 1: both 0.01; token 2: clip(0.3) = 0.2, max(0.09, 0.04) = 0.09 (unclipped branch)
    assert loss.item() == pytest.approx(0.5 * (1.69 + 0.01 + 0.09) / 3)
    assert clipped.item() == pytest.approx(1 / 3)
    loss.backward()
    # the clipped branch has no gradient; the unclipped one has d/dV 0.5 (V - R)^2 / 3
    assert rounded(values.grad) == [[0.0, round(-0.1 / 3, 5), 0.1, 0.0]]


def test_kl_shaped_rewards_put_the_score_on_each_rows_last_real_token():
    logp = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, -1.0, 0.0]])
    ref_logp = torch.tensor([[-1.2, -1.0, -1.0], [-1.0, -1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    rewards = kl_shaped_rewards(torch.tensor([2.0, -1.0]), logp, ref_logp, mask, kl_coef=0.5)
    # row 0: kl 0.2, 0, 0 -> -0.1, 0, 0, score 2 at t = 2; row 1: kl -1 -> +0.5, score -1 at t = 0
    assert rounded(rewards) == [[-0.1, 0.0, 2.0], [-0.5, 0.0, 0.0]]


def test_masked_whiten_uses_real_tokens_only():
    values = torch.tensor([[1.0, 3.0, 100.0], [5.0, 100.0, 100.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # real tokens 1, 3, 5: mean 3, Bessel variance (4 + 0 + 4) / 2 = 4, std 2
    assert rounded(masked_whiten(values, mask)) == [[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]


def test_ppo_policy_loss_clips_per_token_and_stops_the_gradient_there():
    logp = torch.log(torch.tensor([[1.5, 1.0, 0.5]])).requires_grad_(True)
    advantages = torch.tensor([[1.0, -0.5, -2.0]])
    mask = torch.ones(1, 3)
    per_token, stats = POLICY_LOSSES.get("clip")(PolicyLossInputs(logp, torch.zeros(1, 3), advantages, mask),
                                                 LossSettings(0.2, 0.2))
    loss = (per_token * token_weights(mask, "bnpo")).sum()  # PPO's token mean over the batch
    clipped = stats["clip_region_sum"] / stats["tokens"]
    # token 0: min(1.5, 1.2) = 1.2; token 1: -0.5; token 2: min(-1.0, -1.6) = -1.6 (clip at 0.8)
    assert loss.item() == pytest.approx(-(1.2 - 0.5 - 1.6) / 3)
    assert clipped.item() == pytest.approx(2 / 3)
    loss.backward()
    # only token 1 passes a gradient: d/dlogp of -ratio * A / 3 = 0.5 / 3 at ratio 1
    assert rounded(logp.grad) == [[0.0, round(0.5 / 3, 5), 0.0]]


def test_explained_variance_is_one_for_a_perfect_value_model():
    returns = torch.tensor([[1.0, 2.0, 4.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full((1, 4), 7 / 3), returns, mask) == pytest.approx(0.0, abs=1e-6)
