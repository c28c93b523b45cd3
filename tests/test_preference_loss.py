"""Bradley–Terry loss and pair accuracy against hand-computed values."""

import math

import pytest
import torch

from grpokit.algorithms.preference import bradley_terry_loss, pair_accuracy


def test_loss_is_the_mean_negative_log_sigmoid_of_the_score_difference():
    # pair 1: difference 2 -> log(1 + e^-2) = 0.126928; pair 2: difference -1 -> log(1 + e) = 1.313262
    loss = bradley_terry_loss(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0]))
    assert loss.item() == pytest.approx((0.126928 + 1.313262) / 2, abs=1e-6)


def test_equal_scores_cost_log_2():
    assert bradley_terry_loss(torch.zeros(3), torch.zeros(3)).item() == pytest.approx(math.log(2))


def test_margin_is_subtracted_from_the_difference_per_pair():
    # differences 1 and 3, margins 1 and 1 -> log 2 and log(1 + e^-2)
    loss = bradley_terry_loss(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0]))
    assert loss.item() == pytest.approx((math.log(2) + 0.126928) / 2, abs=1e-6)
    assert bradley_terry_loss(torch.tensor([1.0]), torch.tensor([0.0]), margin=0.0).item() == pytest.approx(0.313262, abs=1e-6)


def test_gradient_pushes_chosen_up_and_rejected_down_by_one_minus_sigmoid():
    chosen, rejected = torch.tensor([1.0], requires_grad=True), torch.tensor([0.0], requires_grad=True)
    bradley_terry_loss(chosen, rejected).backward()
    # d/dc [-log sigmoid(c - r)] = -(1 - sigmoid(1)) = -0.268941
    assert chosen.grad.item() == pytest.approx(-0.268941, abs=1e-6)
    assert rejected.grad.item() == pytest.approx(0.268941, abs=1e-6)


def test_swapping_a_pair_changes_the_loss_by_the_difference():
    # -log s(d) - (-log s(-d)) = -d for every d
    forward = bradley_terry_loss(torch.tensor([0.7]), torch.tensor([-0.5]))
    swapped = bradley_terry_loss(torch.tensor([-0.5]), torch.tensor([0.7]))
    assert (forward - swapped).item() == pytest.approx(-1.2, abs=1e-6)


def test_large_differences_stay_finite():
    assert bradley_terry_loss(torch.tensor([100.0]), torch.tensor([0.0])).item() == pytest.approx(0.0, abs=1e-6)
    assert bradley_terry_loss(torch.tensor([-100.0]), torch.tensor([0.0])).item() == pytest.approx(100.0)


def test_pair_accuracy_counts_wins_and_half_of_ties():
    chosen, rejected = torch.tensor([3.0, 1.0, 2.0, 0.0, 5.0]), torch.tensor([1.0, 2.0, 2.0, -1.0, 5.0])
    assert pair_accuracy(chosen, rejected) == pytest.approx((1 + 0 + 0.5 + 1 + 0.5) / 5)


def test_a_model_that_cannot_tell_pairs_apart_is_at_chance():
    assert pair_accuracy(torch.full((4,), 0.3), torch.full((4,), 0.3)) == 0.5
