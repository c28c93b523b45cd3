"""Process rewards: one score per reasoning step (DeepSeekMath process supervision, §4.1.3).

A process reward function has the signature ``fn(prompts, completions, steps, **kwargs) ->
list[list[float]]``. ``steps[i]`` holds the step texts of completion ``i`` (cut at
``step_separator`` by :func:`split_steps`) and the function returns one finite
score per step. The other keywords are the outcome-reward ones: ``completion_ids``, every
dataset column, ``trainer_state``.

A process reward is named like a reward function (registered name or
``package.module:function``) or is a directory holding a sequence-classification model with
one output (a process reward model), which scores the prompt plus the completion up to the end
of each step.

>>> digit_sum_steps(["sum a4b7:"], ["<reasoning>a4=4,b7=12</reasoning><answer>12</answer>"],
...                 steps=[["<reasoning>a4=4", "b7=12</reasoning><answer>12</answer>"]])
[[1.0, 0.0]]
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from transformers import AutoModelForSequenceClassification

from grpokit.data import render_prompt
from grpokit.models import ModelLoadError, load_pretrained, load_tokenizer
from grpokit.answers import answers_match, completion_text, extract_answer
from grpokit.rewards.lookup import resolve_reward, reward_name
from grpokit.rewards.scoring import _build_kwargs, _is_number
from grpokit.tasks.digit_sum import LABELS, parse_digits, running_sums

ProcessRewardFunc = Callable[..., Sequence[Sequence[float]]]

#: Registered process reward functions by name; fill it with :func:`register_process_reward`.
PROCESS_REWARD_REGISTRY: dict[str, ProcessRewardFunc] = {}


def register_process_reward(name: str) -> Callable[[ProcessRewardFunc], ProcessRewardFunc]:
    """Decorator adding a process reward function to :data:`PROCESS_REWARD_REGISTRY`.

    Registering a different function under a taken name raises ``ValueError``.
    """

    def decorator(fn: ProcessRewardFunc) -> ProcessRewardFunc:
        existing = PROCESS_REWARD_REGISTRY.get(name)
        if existing is not None and existing is not fn:
            raise ValueError(f"register_process_reward: name {name!r} is already registered")
        PROCESS_REWARD_REGISTRY[name] = fn
        return fn

    return decorator


def resolve_process_reward(spec: ProcessRewardFunc | str, device: torch.device | None = None
                           ) -> ProcessRewardFunc:
    """A callable, a registered name, ``package.module:function``, or a PRM model directory.

    >>> resolve_process_reward("digit_sum_steps") is digit_sum_steps
    True
    """
    if callable(spec):
        return spec
    if ":" in spec:
        return resolve_reward(spec)
    if spec in PROCESS_REWARD_REGISTRY:
        return PROCESS_REWARD_REGISTRY[spec]
    if Path(spec).is_dir():
        return ProcessRewardModel(spec, device)
    raise ValueError(f"unknown process reward {spec!r}; registered: {', '.join(sorted(PROCESS_REWARD_REGISTRY))}; "
                     f"or give 'package.module:function' or a sequence-classification model directory")


def score_steps(fn: ProcessRewardFunc, prompts: Sequence[Any], completions: Sequence[Any],
                steps: Sequence[Sequence[str]], completion_ids: Sequence[Sequence[int]],
                columns: dict[str, Sequence[Any]] | None = None, **extra: Any) -> list[list[float]]:
    """Call a process reward on N completions and check it gave one finite score per step.

    ``prompts`` and ``columns`` hold one value per completion or per prompt, as in
    ``score_completions``; ``extra`` (such as ``trainer_state``) is passed through.
    """
    name = reward_name(fn)
    if "steps" in (columns or {}):
        raise ValueError("dataset column 'steps' clashes with the process reward keyword 'steps'; rename the column")
    kwargs = {**_build_kwargs(prompts, completions, completion_ids, columns or {}), "steps": steps, **extra}
    output = list(fn(**kwargs))
    if len(output) != len(steps):
        raise ValueError(f"process reward {name!r} returned {len(output)} score lists for "
                         f"{len(steps)} completions; expected one list per completion")
    for i, (scores, expected) in enumerate(zip(output, steps)):
        if len(scores) != len(expected) or not all(_is_number(s) and math.isfinite(s) for s in scores):
            raise ValueError(f"process reward {name!r} returned {list(scores)!r} for completion {i}; "
                             f"expected {len(expected)} finite numbers, one per step of {list(expected)!r}")
    return [[float(s) for s in scores] for scores in output]


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


@dataclass(frozen=True)
class StepScorer:
    """A process reward with its step separator: cuts each completion into steps, scores them
    and finds the token each step ends in."""

    fn: ProcessRewardFunc
    separator: str

    def __call__(self, texts: list[str], completion_ids: list[list[int]], tokenizer, **inputs: Any
                 ) -> tuple[list[list[float]], list[list[int]]]:
        """``inputs`` are the reward keywords (``prompts``, ``columns``, ``trainer_state``).

        Returns:
            (one score per step of each completion, the token index at which each step ends).
        """
        spans = [split_steps(text, self.separator) for text in texts]
        steps = [[text[start:end] for start, end in row] for text, row in zip(texts, spans)]
        scores = score_steps(self.fn, completions=texts, steps=steps, completion_ids=completion_ids, **inputs)
        ends = [step_end_tokens([end for _, end in row], decoded_length(tokenizer, ids), len(ids))
                for row, ids in zip(spans, completion_ids)]
        return scores, ends

    def score_turns(self, texts: list[str], completion_ids: list[list[int]], sampled_masks: list[list[int]],
                    tokenizer, **inputs: Any) -> tuple[list[list[float]], list[list[int]]]:
        """Per-turn rewards: the steps of an episode are its model turns (the runs of sampled
        tokens, each decoded on its own), scored by the same function; each step ends at its
        turn's last sampled token."""
        ends = [turn_end_tokens(mask) for mask in sampled_masks]
        starts = [[0] + [end + 1 for end in row[:-1]] for row in ends]
        steps = [[tokenizer.decode([t for t, m in zip(ids[a:b + 1], mask[a:b + 1]) if m], skip_special_tokens=True)
                  for a, b in zip(row_starts, row_ends)]
                 for ids, mask, row_starts, row_ends in zip(completion_ids, sampled_masks, starts, ends)]
        scores = score_steps(self.fn, completions=texts, steps=steps, completion_ids=completion_ids, **inputs)
        return scores, ends


def turn_end_tokens(sampled_mask: Sequence[int]) -> list[int]:
    """The index of the last token of each model turn: each run of 1s in an episode's
    ``sampled_mask`` (0 on the environment's tokens).

    >>> turn_end_tokens([1, 1, 0, 0, 1, 1, 1, 0])
    [1, 6]
    """
    return [t for t, m in enumerate(sampled_mask) if m and (t + 1 == len(sampled_mask) or not sampled_mask[t + 1])]


def decoded_length(tokenizer, ids: list[int]) -> Callable[[int], int]:
    """``k -> len(decode(ids[:k]))``: maps character positions to tokens for any tokenizer."""
    return lambda k: len(tokenizer.decode(ids[:k], skip_special_tokens=True))


# ------------------------------------------------------------------ built-in: the digit-sum scratchpad

STEP_PATTERN = re.compile(r"([a-j])(\d)=(\d+)")


@register_process_reward("digit_sum_steps")
def digit_sum_steps(prompts, completions, steps, **kwargs) -> list[list[float]]:
    """1.0 for each correct scratchpad step of a digit sum, else 0.0 (use ``step_separator: ","``).

    Step k is correct when it states ``<k-th label><k-th digit>=<true running sum through k>``
    (after a slip every later step is wrong, since its running sum is); a step holding an
    ``<answer>`` is correct only if that answer is the true total; a step with neither is wrong.
    """
    scores = []
    for i, (prompt, completion_steps) in enumerate(zip(prompts, steps)):
        digits = parse_digits(completion_text(prompt))
        if not digits:
            raise ValueError(f"digit_sum_steps: prompt {i} ({completion_text(prompt)!r}) has no digits; "
                             f"expected a digit-sum prompt such as 'sum a4b7:'")
        sums = running_sums(digits)
        scores.append([float(_step_is_correct(step, k, digits, sums)) for k, step in enumerate(completion_steps)])
    return scores


def _step_is_correct(step: str, k: int, digits: str, sums: list[int]) -> bool:
    expressions, answer = STEP_PATTERN.findall(step), extract_answer(step)
    if not expressions and answer is None:
        return False
    expected = [(LABELS[k], digits[k], str(sums[k]))] if k < len(digits) else None
    expression_ok = not expressions or expressions == expected
    return expression_ok and (answer is None or answers_match(answer, sums[-1]))


# ------------------------------------------------------------------ a process reward model

class ProcessRewardModel:
    """A sequence-classification model directory with one output, used as a process reward.

    The score of step j is the model's output on the rendered prompt followed by the completion
    up to the end of step j; all prefixes of a call run in batches of ``batch_size``.
    """

    def __init__(self, path: str | Path, device: torch.device | None = None, batch_size: int = 16):
        self.device = device or torch.device("cpu")
        self.model = load_pretrained(AutoModelForSequenceClassification, path, "process reward model",
                                     dtype=torch.float32).to(self.device).eval()
        if self.model.config.num_labels != 1:
            raise ModelLoadError(f"process reward model {str(path)!r} has num_labels="
                             f"{self.model.config.num_labels}; expected 1 (one score per text)")
        self.tokenizer = load_tokenizer(path)
        self.model.config.pad_token_id = self.tokenizer.pad_token_id  # finds each row's last token
        self.batch_size = batch_size
        self.__name__ = f"prm:{Path(path).name}"

    @torch.no_grad()
    def __call__(self, prompts, completions, steps, **kwargs) -> list[list[float]]:
        texts, counts = [], []
        for prompt, completion, completion_steps in zip(prompts, completions, steps):
            rendered, text = render_prompt(prompt, self.tokenizer), completion_text(completion)
            texts += [rendered + text[:end] for end in _step_ends(text, completion_steps)]
            counts.append(len(completion_steps))
        flat = []
        for start in range(0, len(texts), self.batch_size):
            encoded = self.tokenizer(texts[start:start + self.batch_size], return_tensors="pt",
                                     padding=True).to(self.device)
            flat += self.model(**encoded).logits[:, 0].float().tolist()
        offsets = [0, *accumulate(counts)]
        return [flat[a:b] for a, b in zip(offsets, offsets[1:])]


def _step_ends(text: str, steps: Sequence[str]) -> list[int]:
    """Exclusive end of each step in ``text``, the steps found in order.

    >>> _step_ends("a4=4,b7=11", ["a4=4", "b7=11"])
    [4, 10]
    """
    ends, at = [], 0
    for step in steps:
        start = text.find(step, at)
        if start < 0:
            raise ValueError(f"step {step!r} does not occur in the completion {text!r} after character {at}")
        at = start + len(step)
        ends.append(at)
    return ends
