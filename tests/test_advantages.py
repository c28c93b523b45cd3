"""Hand-computed checks for the grpo estimator's group-relative advantages."""

import pytest
import torch

from grpokit.algorithms import group_advantages
from grpokit.algorithms.estimators.group_relative import REWARD_SCALES

# Two groups of G=4. Group 1: mean 0.5, deviations ±0.5,
# unbiased std = sqrt((4 * 0.25) / 3) = 0.5773503. Group 2: constant -> 0.
REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])


def test_group_scale():
    # 0.5 / (0.5773503 + 1e-4) = 0.5 / 0.5774503 = 0.8658754
    a = 0.8658754
    expected = torch.tensor([a, -a, -a, a, 0.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(group_advantages(REWARDS, 4, "group"), expected, atol=1e-6, rtol=0)


def test_group_scale_without_eps():
    # 0.5 / 0.5773503 = 0.8660254 (= sqrt(3) / 2)
    a = 0.8660254
    got = group_advantages(REWARDS, 4, "group", eps=0.0)
    torch.testing.assert_close(got, torch.tensor([a, -a, -a, a, 0, 0, 0, 0.0]), atol=1e-6, rtol=0)


def test_batch_scale_uses_whole_batch_std():
    # batch mean 10/8 = 1.25; squared deviations 0.0625+1.5625+1.5625+0.0625+4*0.5625 = 5.5
    # unbiased var 5.5/7 = 0.7857143, std 0.8864053; 0.5 / (0.8864053 + 1e-4) = 0.5640124
    a = 0.5640124
    expected = torch.tensor([a, -a, -a, a, 0.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(group_advantages(REWARDS, 4, "batch"), expected, atol=1e-6, rtol=0)


def test_none_scale_is_mean_centering():
    expected = torch.tensor([0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(group_advantages(REWARDS, 4, "none"), expected, atol=0, rtol=0)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_constant_group_gets_exactly_zero(scale):
    # 0.1 is not exactly representable, so a naive mean could leave a tiny residue.
    rewards = torch.tensor([0.1, 0.1, 0.1, 1.0, 0.0, 1.0])
    adv = group_advantages(rewards, 3, scale)
    assert torch.equal(adv[:3], torch.zeros(3))
    assert (adv[3:] != 0).all()


def test_integer_rewards_and_group_size_one():
    assert group_advantages(torch.tensor([1, 0, 0, 1]), 2, "none").tolist() == [0.5, -0.5, -0.5, 0.5]
    assert group_advantages(torch.tensor([1.0, 0.0]), 1).tolist() == [0.0, 0.0]


def test_bad_group_size_raises():
    with pytest.raises(ValueError, match="not divisible by group_size"):
        group_advantages(torch.ones(7), 4)
    with pytest.raises(ValueError, match="not divisible by group_size"):
        group_advantages(torch.ones(4), 0)


def test_unknown_scale_lists_valid_names():
    with pytest.raises(ValueError, match=r"valid: \['batch', 'group', 'none'\]"):
        group_advantages(REWARDS, 4, "std")
    assert {"group", "batch", "none"} == set(REWARD_SCALES)
