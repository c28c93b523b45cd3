"""Rule rewards for the ``<reasoning>…</reasoning><answer>…</answer>`` format.

>>> good = "<reasoning>a4=4,b7=11</reasoning><answer>11</answer>"
>>> format_reward(["x"], [good, "11"])
[1.0, 0.0]
>>> correctness_reward(["x", "x"], [good, good], answer=["11", "12"])
[1.0, 0.0]
"""

from __future__ import annotations

import re

from grpokit.rewards.scoring import register_reward

ANSWER_PATTERN = re.compile(r"<answer>([^<]*)</answer>")
FORMAT_PATTERN = re.compile(r"^<reasoning>[^<]*</reasoning>\s*<answer>[^<]*</answer>$")


def completion_text(completion) -> str:
    """The text of a completion: a string, or the content of a chat completion's last message."""
    if isinstance(completion, list):
        return completion[-1]["content"] if completion else ""
    return completion


def extract_answer(completion: str) -> str | None:
    """The text inside the last ``<answer>…</answer>``, stripped; None if there is none.

    >>> extract_answer("<reasoning>4,11</reasoning><answer> 11 </answer>")
    '11'
    """
    found = ANSWER_PATTERN.findall(completion_text(completion))
    return found[-1].strip() if found else None


def is_well_formatted(completion: str) -> bool:
    """True for exactly ``<reasoning>…</reasoning><answer>…</answer>`` (outer space ok).

    >>> is_well_formatted("<answer>11</answer>")
    False
    """
    return FORMAT_PATTERN.match(completion_text(completion).strip()) is not None


def answers_match(predicted: str | None, reference) -> bool:
    """Equal as numbers when both parse as numbers, else as stripped strings.

    >>> answers_match("12.0", 12), answers_match("x", "y"), answers_match(None, "1")
    (True, False, False)
    """
    if predicted is None or reference is None:
        return False
    try:
        return float(predicted) == float(reference)
    except ValueError:
        return predicted.strip() == str(reference).strip()


@register_reward("format")
def format_reward(prompts, completions, **kwargs) -> list[float]:
    """1.0 when the completion is exactly reasoning-then-answer in tags, else 0.0."""
    return [float(is_well_formatted(c)) for c in completions]


@register_reward("correctness")
def correctness_reward(prompts, completions, answer, **kwargs) -> list[float | None]:
    """1.0 when the tagged answer matches the ``answer`` column; None where there is no answer."""
    return [None if ref is None else float(answers_match(extract_answer(c), ref))
            for c, ref in zip(completions, answer)]
