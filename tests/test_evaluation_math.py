"""Hand-computed checks for grpokit.evaluation.pass_at_k."""

import pytest

from grpokit.evaluation.pass_at_k import maj_at_k, majority_vote, mean_pass_at_k, pass_at_k


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (5, 2, 1, 0.4),  # c / n
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (4, 4, 2, 1.0),  # n - c = 0 < k
        (5, 0, 3, 0.0),  # no correct sample
        (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5) = 1 - 21/252 = 0.9166667
        (5, 3, 3, 1.0),  # n - c = 2 < k = 3
    ],
)
def test_pass_at_k_by_hand(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "n, c, k, match",
    [(3, 1, 4, "k .* must not exceed"), (3, 4, 1, "c .* must not exceed"), (-1, 0, 1, "n >= 0"), (3, -1, 1, "c >= 0"), (3, 1, 0, "k >= 1")],
)
def test_pass_at_k_errors(n, c, k, match):
    with pytest.raises(ValueError, match=match):
        pass_at_k(n, c, k)


def test_mean_pass_at_k():
    # (0.4 + 1.0) / 2 = 0.7 ; with k=2: (0.7 + 1.0) / 2 = 0.85
    assert mean_pass_at_k([(5, 2), (4, 4)], 1) == pytest.approx(0.7)
    assert mean_pass_at_k([(5, 2), (4, 4)], 2) == pytest.approx(0.85)
    with pytest.raises(ValueError, match="empty"):
        mean_pass_at_k([], 1)


def test_majority_vote():
    assert majority_vote(["2", "1", "1"]) == "1"
    assert majority_vote(["1", "2", "2", "1"]) == "1"  # tie: first occurrence wins
    assert majority_vote(["2", "1", "2", "1"]) == "2"
    assert majority_vote([None, None, "3", None]) == "3"  # None never votes
    assert majority_vote([None, "a", None, "b", "b"]) == "b"
    assert majority_vote([None, None]) is None
    assert majority_vote([]) is None


def test_maj_at_k():
    assert maj_at_k(["1", "2", "2", None, "1"], [True, False, False, False, True]) == 1.0  # tie -> "1"
    assert maj_at_k(["2", "1", "2"], [False, True, False]) == 0.0
    assert maj_at_k([None, "7", None], [False, True, False]) == 1.0
    assert maj_at_k([None, None], [False, False]) == 0.0
    # correctness of the voted answer is taken from its first sample
    assert maj_at_k(["5", "5", "4"], [True, False, False]) == 1.0
    with pytest.raises(ValueError, match="differ in length"):
        maj_at_k(["1"], [True, False])
