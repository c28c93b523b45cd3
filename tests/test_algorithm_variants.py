"""Every estimator and policy loss variant against numbers computed by hand, at token and
sequence level; and the aggregations' behaviour across processes (bnpo vs dapo)."""

import math
from types import SimpleNamespace

import pytest
import torch

from grpokit.algorithms import (
    ADVANTAGE_ESTIMATORS,
    POLICY_LOSSES,
    AdvantageInputs,
    BatchTotals,
    LossSettings,
    PolicyLossInputs,
    token_weights,
)
from grpokit.algorithms.dynamic_sampling import groups_with_advantage, groups_with_varied_rewards
from grpokit.algorithms.sampler_correction import truncated_importance_weights

D = torch.float64


def estimate(name, rewards, group_size, lengths, **config):
    width = max(lengths)
    mask = (torch.arange(width)[None] < torch.tensor(lengths)[:, None]).to(D)
    inputs = AdvantageInputs(torch.tensor(rewards, dtype=D), torch.arange(len(rewards)) // group_size, mask)
    return ADVANTAGE_ESTIMATORS.get(name)(inputs, SimpleNamespace(**config))


# ------------------------------------------------------------------ advantage estimators
def test_grpo_dr_grpo_scales_by_hand():
    # rewards 1, 0, 0: mean 1/3; unbiased std sqrt(1/3) = 0.57735; eps 1e-4
    group = estimate("grpo", [1.0, 0.0, 0.0], 3, [2, 1, 1], scale_rewards="group")
    assert group[:, 0].tolist() == pytest.approx([(2 / 3) / (0.5773503 + 1e-4), (-1 / 3) / (0.5773503 + 1e-4),
                                                  (-1 / 3) / (0.5773503 + 1e-4)], abs=1e-6)
    dr = estimate("grpo", [1.0, 0.0, 0.0], 3, [2, 1, 1], scale_rewards="none")  # Dr. GRPO: no std
    torch.testing.assert_close(dr, torch.tensor([[2 / 3, 2 / 3], [-1 / 3, -1 / 3], [-1 / 3, -1 / 3]], dtype=D))


def test_rloo_compares_each_completion_with_the_others():
    # group 1: 1 vs mean(0, 0) -> 1; 0 vs mean(1, 0) -> -0.5 (twice);
    # group 2: 3 vs mean(1, 1) -> 2; 1 vs mean(3, 1) -> -1 (twice)
    adv = estimate("rloo", [1.0, 0.0, 0.0, 3.0, 1.0, 1.0], 3, [1] * 6)
    assert adv[:, 0].tolist() == pytest.approx([1.0, -0.5, -0.5, 2.0, -1.0, -1.0])
    with pytest.raises(ValueError, match="at least 2"):
        estimate("rloo", [1.0], 1, [1])


def test_reinforce_pp_whitens_over_every_token_of_the_batch():
    # rewards 1 (2 tokens) and 0 (1 token): token values 1, 1, 0, mean 2/3, std sqrt(1/3)
    adv = estimate("reinforce_pp", [1.0, 0.0], 2, [2, 1])
    s = math.sqrt(1 / 3)
    torch.testing.assert_close(adv, torch.tensor([[(1 / 3) / s, (1 / 3) / s], [(-2 / 3) / s, 0.0]], dtype=D))


def test_reinforce_pp_baseline_subtracts_the_group_mean_first():
    # groups (1, 0) and (0.5, 0.5): centred 0.5, -0.5, 0, 0 on one token each: mean 0,
    # unbiased std sqrt(0.5 / 3) = 0.408248
    adv = estimate("reinforce_pp_baseline", [1.0, 0.0, 0.5, 0.5], 2, [1] * 4)
    assert adv[:, 0].tolist() == pytest.approx([0.5 / 0.4082483, -0.5 / 0.4082483, 0.0, 0.0], abs=1e-6)
    # without the baseline the equal-reward group is not zero
    plain = estimate("reinforce_pp", [1.0, 0.0, 0.5, 0.5], 2, [1] * 4)
    assert plain[2, 0].item() == pytest.approx(0.0, abs=1e-6) and plain[0, 0].item() > 0


def test_group_ids_must_be_contiguous_equal_groups():
    inputs = AdvantageInputs(torch.zeros(4), torch.tensor([0, 1, 0, 1]), torch.ones(4, 1))
    with pytest.raises(ValueError, match="contiguous"):
        inputs.group_size


# ------------------------------------------------------------------ policy losses
def loss_and_grad(name, log_ratio, advantages, mask=None, settings=LossSettings(0.2, 0.28), **extra):
    logp = torch.tensor(log_ratio, dtype=D).requires_grad_(True)
    mask = torch.ones_like(logp) if mask is None else torch.tensor(mask, dtype=D)
    inputs = PolicyLossInputs(logp, torch.zeros_like(logp), torch.tensor(advantages, dtype=D), mask, **extra)
    per_token, metrics = POLICY_LOSSES.get(name)(inputs, settings)
    (per_token * mask).sum().backward()
    return per_token.detach(), logp.grad, metrics


def test_clip_higher_lets_a_positive_token_rise_further():
    # ratio 1.25, A = +1: inside DAPO's [0.8, 1.28] (loss -1.25, gradient -1.25), clipped in [0.8, 1.2]
    per_token, grad, _ = loss_and_grad("clip", [[math.log(1.25)]], [[1.0]])
    assert per_token.item() == pytest.approx(-1.25) and grad.item() == pytest.approx(-1.25)
    per_token, grad, metrics = loss_and_grad("clip", [[math.log(1.25)]], [[1.0]], settings=LossSettings(0.2, 0.2))
    assert per_token.item() == pytest.approx(-1.2) and grad.item() == 0.0 and metrics["clip_high_sum"] == 1


def test_gspo_shares_one_ratio_per_sequence_by_hand():
    # log-ratios 0.1, 0.3 (and padding 5.0): s = exp(0.2) = 1.2214 on every valid token, A = -1:
    # loss per token = s; summed over the 2 tokens, d(2 s)/d logp_t = 2 * s / |o| = s
    per_token, grad, metrics = loss_and_grad("gspo", [[0.1, 0.3, 5.0]], [[-1.0, -1.0, -1.0]],
                                             mask=[[1.0, 1.0, 0.0]])
    s = math.exp(0.2)
    assert per_token[0, :2].tolist() == pytest.approx([s, s])
    assert grad[0].tolist() == pytest.approx([s, s, 0.0])
    assert metrics["clip_units_sum"].item() == 1.0  # one sequence


def test_gspo_is_clipped_as_a_whole_sequence():
    # s = exp(0.3) = 1.3499 > 1.28 with A = +1: every token is clipped, no gradient
    per_token, grad, metrics = loss_and_grad("gspo", [[0.2, 0.4]], [[1.0, 1.0]])
    assert per_token[0].tolist() == pytest.approx([-1.28, -1.28]) and grad.abs().sum() == 0
    assert metrics["clip_high_sum"].item() == 1.0 and metrics["clip_units_sum"].item() == 1.0


def test_gspo_token_equals_gspo_with_equal_advantages_and_differs_with_per_token_ones():
    ratios, adv = [[0.1, -0.05, 0.02], [0.03, 0.0, 0.0]], [[0.7] * 3, [-1.2] * 3]
    mask = [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]
    a = loss_and_grad("gspo", ratios, adv, mask)
    b = loss_and_grad("gspo_token", ratios, adv, mask)
    torch.testing.assert_close(a[0] * torch.tensor(mask, dtype=D), b[0] * torch.tensor(mask, dtype=D))
    # gspo: |o| tokens of f(s), ds/dlogp_t = s / |o|; gspo_token: d r_t / dlogp_t = s: the same
    torch.testing.assert_close(a[1], b[1])
    # per-token advantages: token t's gradient is -s * A_t (unclipped, s = exp(mean log-ratio))
    _, grad, _ = loss_and_grad("gspo_token", [[0.1, -0.1]], [[1.0, -2.0]])
    assert grad[0].tolist() == pytest.approx([-1.0, 2.0])  # s = exp(0) = 1


def test_cispo_keeps_the_gradient_of_clipped_tokens():
    # ratios e^1 = 2.718 (capped at 1.28) and 0.5 (no lower bound), A = +1 and -1:
    # loss = -w * A * logp: -1.28 * 1 * 1 and -0.5 * (-1) * log 0.5; gradient -w * A
    per_token, grad, metrics = loss_and_grad("cispo", [[1.0, math.log(0.5)]], [[1.0, -1.0]])
    assert per_token[0].tolist() == pytest.approx([-1.28, 0.5 * math.log(0.5)])
    assert grad[0].tolist() == pytest.approx([-1.28, 0.5])
    _, clip_grad, _ = loss_and_grad("clip", [[1.0, math.log(0.5)]], [[1.0, -1.0]])
    assert clip_grad[0].tolist() == [0.0, 0.0]  # PPO's clip gives these tokens nothing


def test_truncated_importance_sampling_weights_the_surrogate_not_the_kl():
    # sampler p = 0.25, policy p_old = 0.5: weight min(2, 1.5) = 1.5; on-policy ratio 1, A = 1
    old = torch.log(torch.tensor([[0.5]], dtype=D))
    weights = truncated_importance_weights(old, torch.log(torch.tensor([[0.25]], dtype=D)), torch.ones(1, 1), 1.5)
    assert weights.item() == pytest.approx(1.5)
    logp = old.clone().requires_grad_(True)
    ref = torch.log(torch.tensor([[0.25]], dtype=D))
    inputs = PolicyLossInputs(logp, old, torch.ones(1, 1, dtype=D), torch.ones(1, 1, dtype=D), ref, weights)
    per_token, metrics = POLICY_LOSSES.get("clip")(inputs, LossSettings(0.2, 0.2, beta=0.1))
    kl = 0.5 - math.log(0.5) - 1  # k3 with rho = 0.25 / 0.5
    assert per_token.item() == pytest.approx(-1.5 + 0.1 * kl)
    assert metrics["sampler_weight_max"].item() == pytest.approx(1.5)


# ------------------------------------------------------------------ aggregations across processes
def test_bnpo_averages_each_process_token_mean_and_dapo_takes_the_global_one():
    # process 0: one completion of 3 tokens, losses 1, 1, 1; process 1: one of 1 token, loss 4
    losses = [torch.tensor([[1.0, 1.0, 1.0]]), torch.tensor([[4.0, 0.0, 0.0]])]
    masks = [torch.tensor([[1.0, 1.0, 1.0]]), torch.tensor([[1.0, 0.0, 0.0]])]
    totals = BatchTotals(tokens=4.0, rows=2, processes=2, max_completion_length=3)
    batch_loss = {name: sum((loss * token_weights(mask, name, totals)).sum().item() for loss, mask in zip(losses, masks))
                  for name in ("bnpo", "dapo", "grpo", "dr_grpo")}
    assert batch_loss["bnpo"] == pytest.approx((1.0 + 4.0) / 2)  # mean of the processes' token means
    assert batch_loss["dapo"] == pytest.approx((3.0 + 4.0) / 4)  # token mean over the global batch
    assert batch_loss["grpo"] == pytest.approx((1.0 + 4.0) / 2)  # sequence means, averaged
    assert batch_loss["dr_grpo"] == pytest.approx((3.0 + 4.0) / (3 * 2))
    one = BatchTotals.of(torch.cat([torch.ones(1, 3), torch.tensor([[1.0, 0, 0]])]), 3)
    assert torch.equal(token_weights(torch.ones(1, 3), "bnpo", BatchTotals(3.0, 1)),
                       token_weights(torch.ones(1, 3), "dapo", BatchTotals(3.0, 1)))  # equal on one process
    assert one.tokens == 4.0


# ------------------------------------------------------------------ dynamic sampling filters
def test_dynamic_sampling_filters():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    assert groups_with_varied_rewards(rewards, 2).tolist() == [False, True, False]
    advantages = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.3, 0.0], [-0.3, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    assert groups_with_advantage(advantages, mask, 2).tolist() == [False, True]
