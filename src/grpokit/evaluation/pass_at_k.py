"""Evaluation estimators: unbiased pass@k (Chen et al. 2021) and majority vote (maj@k).

Majority votes group answers with an equality the caller gives (the evaluation passes the
correctness reward's, so ``12`` and ``12.0`` are one answer).
"""

from __future__ import annotations

import operator
from typing import Callable


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k = 1 - C(n-c, k) / C(n, k) for one problem.

    Uses the stable product form 1 - prod_{i=n-c+1}^{n} (1 - k/i) (human-eval).

    Args:
        n: samples drawn for the problem.
        c: how many of them are correct.
        k: budget, 1 <= k <= n.

    Returns:
        Probability that at least one of k samples drawn without replacement is
        correct; 1.0 when n - c < k.

    Example (5 samples, 2 correct):
        >>> round(pass_at_k(5, 2, 1), 6), round(pass_at_k(5, 2, 2), 6)
        (0.4, 0.7)
    """
    if n < 0 or c < 0 or k < 1:
        raise ValueError(f"need n >= 0, c >= 0, k >= 1; got n={n}, c={c}, k={k}")
    if k > n:
        raise ValueError(f"k ({k}) must not exceed the number of samples n ({n})")
    if c > n:
        raise ValueError(f"correct count c ({c}) must not exceed the number of samples n ({n})")
    if n - c < k:
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def mean_pass_at_k(per_problem: list[tuple[int, int]], k: int) -> float:
    """Average pass@k over problems.

    Args:
        per_problem: one (n, c) pair per problem.
        k: budget, must be <= every n.

    Returns:
        Mean of ``pass_at_k(n, c, k)``.

    Example:
        >>> round(mean_pass_at_k([(5, 2), (4, 4)], k=1), 6)
        0.7
    """
    if not per_problem:
        raise ValueError("per_problem is empty; need at least one (n, c) pair")
    return sum(pass_at_k(n, c, k) for n, c in per_problem) / len(per_problem)


def majority_vote(answers: list[str | None], same: Callable[[str, str], bool] = operator.eq) -> str | None:
    """Most common non-None answer, answers grouped by ``same``; ties go to the group seen
    first, and the group is represented by its first answer.

    Args:
        answers: extracted answer per sample, None when none could be parsed.
        same: when two answers count as one (the correctness reward's equality, so that ``12``
            and ``12.0`` vote together); plain string equality by default.

    Returns:
        The voted answer, or None if every answer is None.

    Example:
        >>> majority_vote(["4", "5", None, "5", "4"])
        '4'
        >>> majority_vote(["7", "12", "12.0", "7.0", "12"], same=lambda a, b: float(a) == float(b))
        '12'
    """
    groups: list[list] = []  # [first answer, votes], in first-seen order
    for answer in answers:
        if answer is None:
            continue
        for group in groups:
            if same(answer, group[0]):
                group[1] += 1
                break
        else:
            groups.append([answer, 1])
    if not groups:
        return None
    return max(groups, key=lambda group: group[1])[0]  # max keeps the first of equal counts


def maj_at_k(answers: list[str | None], correct: list[bool],
             same: Callable[[str, str], bool] = operator.eq) -> float:
    """Majority-vote accuracy (maj@k / cons@k) for one problem.

    Args:
        answers: k extracted answers.
        correct: k correctness flags, aligned with ``answers``.
        same: answer equality for the vote (see :func:`majority_vote`).

    Returns:
        1.0 if the voted answer's first sample is marked correct, else 0.0
        (also 0.0 when every answer is None).

    Example (``12`` and ``12.0`` are one answer when compared as numbers; it ties with ``7`` and
    was seen first):
        >>> maj_at_k(["4", "5", "5"], [True, False, False])
        0.0
        >>> numbers = lambda a, b: float(a) == float(b)
        >>> maj_at_k(["12", "12.0", "7", "7"], [True, True, False, False]), maj_at_k(
        ...     ["12", "12.0", "7", "7"], [True, True, False, False], same=numbers)
        (0.0, 1.0)
    """
    if len(answers) != len(correct):
        raise ValueError(f"answers ({len(answers)}) and correct ({len(correct)}) differ in length")
    voted = majority_vote(answers, same)
    if voted is None:
        return 0.0
    return 1.0 if correct[answers.index(voted)] else 0.0
