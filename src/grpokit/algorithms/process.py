"""Process supervision (DeepSeekMath §4.1.3): reasoning steps, their end tokens, token advantages.

A completion is cut into steps at a separator; a process reward scores the end of each step;
the scores are normalised over every step of every output in the group, and a token's
advantage is the sum of the normalised scores of the steps that end at or after it
(ALGORITHMS.md §1.3):

    Â_{i,t} = Σ_{index(j) ≥ t} (r_i^{index(j)} − mean(R)) / std(R)

so a token is credited with its own step and every later step. Tokens after the last step's
end get 0 (no step ends at or after them).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Callable, Sequence

import torch
from torch import Tensor


def split_steps(text: str, separator: str = "\n") -> list[tuple[int, int]]:
    """Character spans ``(start, end)`` of the steps of ``text``, ``end`` exclusive.

    Steps are the pieces between separators; the separator belongs to neither side, and
    pieces that are empty or only whitespace are not steps.

    Example (the digit-sum scratchpad, steps separated by ","):
        >>> text = "a4=4,b7=11,,c1=12"
        >>> spans = split_steps(text, ",")
        >>> spans, [text[s:e] for s, e in spans]
        ([(0, 4), (5, 10), (12, 17)], ['a4=4', 'b7=11', 'c1=12'])
    """
    if not separator:
        raise ValueError("split_steps: separator is empty; expected at least one character")
    spans, start = [], 0
    while start <= len(text):
        stop = text.find(separator, start)
        end = len(text) if stop < 0 else stop
        if text[start:end].strip():
            spans.append((start, end))
        if stop < 0:
            break
        start = stop + len(separator)
    return spans


def step_end_tokens(char_ends: Sequence[int], prefix_length: Callable[[int], int],
                    num_tokens: int) -> list[int]:
    """Index of the token in which each step's last character lies.

    Works for any tokenizer: ``prefix_length(k)`` is the length of the text decoded from the
    first ``k`` tokens, and the step ending at character ``e`` (exclusive) ends in token
    ``k - 1`` for the smallest ``k`` whose prefix reaches ``e`` (found by binary search, so a
    step costs about log2(num_tokens) decodes).

    Args:
        char_ends: exclusive character end of each step in the decoded completion.
        prefix_length: decoded length of the first ``k`` tokens, non-decreasing in ``k``.
        num_tokens: tokens in the completion.

    Returns:
        One token index per step, each in ``[0, num_tokens)``.

    Example (tokens "<reasoning>", "a", "4", "=", "4", ",", "b" of the character tokenizer):
        >>> pieces = ["<reasoning>", "a", "4", "=", "4", ",", "b"]
        >>> step_end_tokens([15, 17], lambda k: len("".join(pieces[:k])), len(pieces))
        [4, 6]
    """
    ends = []
    for end in char_ends:
        k = bisect_left(range(num_tokens + 1), end, key=prefix_length)
        if k == 0 or k > num_tokens:
            raise ValueError(f"step_end_tokens: step end at character {end} is outside the "
                             f"{prefix_length(num_tokens)} characters decoded from {num_tokens} tokens")
        ends.append(k - 1)
    return ends


def process_advantages(step_rewards: Sequence[Sequence[float]], step_ends: Sequence[Sequence[int]],
                       group_size: int, width: int, eps: float = 1e-4) -> Tensor:
    """Per-token advantages from per-step rewards (DeepSeekMath process supervision).

    Rewards are normalised over all steps of all ``group_size`` outputs of a group (mean and
    sample std, like ``group_advantages``); a group with fewer than two steps, or whose step
    rewards are all equal, gets 0 everywhere.

    Args:
        step_rewards: N lists, one reward per step of each completion (groups contiguous).
        step_ends: N lists, the token index at which each step ends (``step_end_tokens``).
        group_size: G, completions per prompt.
        width: T, token columns of the result (the completion tensor's width).
        eps: added to the std before dividing.

    Returns:
        (N, T) advantages: Â[i, t] = sum of the normalised rewards of the steps of completion i
        ending at token t or later; 0 after the last step's end.

    Example (one group of 2 outputs: steps rewarded [1, 0] ending at tokens 1, 3 and [1]
    ending at token 2; R = [1, 0, 1] has mean 2/3 and std 1/√3, so with eps = 0 a reward
    of 1 becomes (1/3)·√3 = 0.5774 and 0 becomes −(2/3)·√3 = −1.1547):
        >>> process_advantages([[1.0, 0.0], [1.0]], [[1, 3], [2]], group_size=2, width=4, eps=0.0)
        tensor([[-0.5774, -0.5774, -1.1547, -1.1547],
                [ 0.5774,  0.5774,  0.5774,  0.0000]])
    """
    n = len(step_rewards)
    if group_size < 1 or n % group_size != 0:
        raise ValueError(f"process_advantages: {n} completions is not a multiple of group_size {group_size}")
    if [len(r) for r in step_rewards] != [len(e) for e in step_ends]:
        raise ValueError("process_advantages: each completion needs one end token per step reward")
    at_step_end = torch.zeros(n, width)  # (N, T) normalised reward placed at each step's end
    for first in range(0, n, group_size):
        rows = range(first, first + group_size)
        rewards = torch.tensor([r for i in rows for r in step_rewards[i]], dtype=torch.float32)  # (S,)
        if rewards.numel() < 2 or bool((rewards == rewards[0]).all()):
            continue  # nothing to compare: the group's advantages stay 0
        normalised = (rewards - rewards.mean()) / (rewards.std() + eps)  # (S,)
        row_ids = torch.tensor([i for i in rows for _ in step_ends[i]])  # (S,)
        token_ids = torch.tensor([t for i in rows for t in step_ends[i]])  # (S,)
        if int(token_ids.max()) >= width:
            raise ValueError(f"process_advantages: a step ends at token {int(token_ids.max())}, "
                             f"beyond width {width}")
        at_step_end.index_put_((row_ids, token_ids), normalised, accumulate=True)
    # Σ over steps ending at t or later = reverse cumulative sum along the tokens
    return at_step_end.flip(1).cumsum(1).flip(1)  # (N, T)
