"""Rule rewards for tagged completions: ``<reasoning>…</reasoning><answer>…</answer>``.

The tag names are keyword arguments, so a YAML config can ask for the DeepSeek-R1 template
(DeepSeek-R1 Table 1)::

    rewards:
      - {name: format, reasoning_tag: think, answer_tag: answer}
      - {name: exact_match, answer_tag: answer}

>>> good = "<reasoning>a4=4,b7=11</reasoning><answer>11</answer>"
>>> format_reward(["x"], [good, "11"])
[1.0, 0.0]
>>> format_reward(["x"], ["<think>x < 3</think> <answer>2</answer>"], reasoning_tag="think")
[1.0]
>>> correctness_reward(["x", "x"], [good, good], answer=["11", "12"])
[1.0, 0.0]
>>> exact_match_reward(["x", "x", "x"], [good, "<answer> 11 </answer>", good], answer=["11", "11", None])
[1.0, 1.0, None]
>>> numeric_match_reward(["x", "x"], ["<answer>1,234.0</answer>", "<answer>3/4</answer>"],
...                      answer=["1234", "0.75"])
[1.0, 1.0]
"""

from __future__ import annotations

import functools
import math
import re

from grpokit.data import boxed_answer, gsm8k_answer
from grpokit.rewards.scoring import register_reward

ANSWER_PATTERN = re.compile(r"<answer>([^<]*)</answer>")
FORMAT_PATTERN = re.compile(r"^<reasoning>[^<]*</reasoning>\s*<answer>[^<]*</answer>$")

_NUMBER = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?(?:[eE][+-]?\d+)?|[+-]?\.\d+(?:[eE][+-]?\d+)?")
_FRACTION = re.compile(r"([+-]?\d+)\s*/\s*(\d+)")


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
    except (ValueError, OverflowError):  # not numbers, or integers beyond float range
        return predicted.strip() == str(reference).strip()


# ----------------------------------------------------------------------- configurable tags


def _untagged(*tags: str) -> str:
    """Regex for text holding none of ``<tag>`` / ``</tag>`` (any other ``<`` is fine)."""
    alternatives = "|".join(re.escape(t) for t in tags)
    return rf"(?:(?!</?(?:{alternatives})>).)*"


@functools.lru_cache(maxsize=None)
def tagged_format_pattern(reasoning_tag: str = "reasoning", answer_tag: str = "answer") -> re.Pattern:
    """Regex for ``<R>…</R>`` then ``<A>…</A>`` and nothing else; spans may not hold these tags.

    >>> bool(tagged_format_pattern("think").fullmatch("<think>1<2</think>\\n<answer>2</answer>"))
    True
    >>> bool(tagged_format_pattern("think").fullmatch("<think>a</think><answer>1</answer><answer>2</answer>"))
    False
    """
    for tag in (reasoning_tag, answer_tag):
        if not isinstance(tag, str) or not re.fullmatch(r"[A-Za-z_][\w.-]*", tag):
            raise ValueError(f"format tags must be XML-like names such as 'think' or 'answer', found {tag!r}")
    body = _untagged(reasoning_tag, answer_tag)
    r, a = re.escape(reasoning_tag), re.escape(answer_tag)
    return re.compile(rf"<{r}>{body}</{r}>\s*<{a}>{body}</{a}>", re.DOTALL)


def tag_content(completion, tag: str = "answer") -> str | None:
    """The stripped text inside the last ``<tag>…</tag>``; None if there is none.

    Unlike :func:`extract_answer`, the span may contain ``<`` (``x < 3``) and newlines.

    >>> tag_content("<answer>a</answer> <answer>\\n x<3 \\n</answer>")
    'x<3'
    >>> tag_content("<think>no answer here</think>") is None
    True
    """
    pattern = _tag_pattern(tag)
    found = pattern.findall(completion_text(completion))
    return found[-1].strip() if found else None


@functools.lru_cache(maxsize=None)
def _tag_pattern(tag: str) -> re.Pattern:
    return re.compile(rf"<{re.escape(tag)}>({_untagged(tag)})</{re.escape(tag)}>", re.DOTALL)


def candidate_answer(completion, answer_tag: str = "answer") -> str:
    """What a completion answers: its ``<answer_tag>`` span, else its last ``\\boxed{}``, else all of it.

    >>> candidate_answer("so <answer> 7 </answer>"), candidate_answer("so \\\\boxed{\\\\frac{1}{2}}.")
    ('7', '\\\\frac{1}{2}')
    >>> candidate_answer("  just 7 ")
    'just 7'
    """
    text = completion_text(completion)
    tagged = tag_content(text, answer_tag)
    if tagged is not None:
        return tagged
    boxed = boxed_answer(text)
    return boxed.strip() if boxed is not None else text.strip()


# --------------------------------------------------------------------------------- numbers


def parse_number(text) -> float | None:
    """A number written as ``42``, ``-3.5``, ``1,234``, ``3/4``, ``50%``, ``$18`` or ``1e-3``; else None.

    A percent sign and a leading dollar sign are dropped without changing the value
    (``50%`` is 50, matching GSM8K, whose answers to percent questions are bare numbers).
    Thousands separators must be complete groups (``1,234`` but not ``1,23``).

    >>> [parse_number(s) for s in ["1,234", "-3.5", "3/4", "50%", "$18.00", " +2 "]]
    [1234.0, -3.5, 0.75, 50.0, 18.0, 2.0]
    >>> parse_number("1,23"), parse_number("x=5"), parse_number("1/0"), parse_number(None)
    (None, None, None, None)
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return _as_float(text)
    if not isinstance(text, str):
        return None
    cleaned = text.strip().removesuffix("%").strip()
    sign = cleaned[0] if cleaned[:1] in ("+", "-") else ""
    cleaned = sign + cleaned[len(sign):].lstrip().removeprefix("$").lstrip()
    fraction = _FRACTION.fullmatch(cleaned)
    if fraction:
        try:  # int() refuses strings past 4,300 digits; the quotient may overflow a float
            numerator, denominator = int(fraction.group(1)), int(fraction.group(2))
            return numerator / denominator if denominator else None
        except (ValueError, OverflowError):
            return None
    if _NUMBER.fullmatch(cleaned):
        return float(cleaned.replace(",", ""))
    return None


def _as_float(number: int | float) -> float | None:
    """``float(number)``; None for an integer too large for a float."""
    try:
        return float(number)
    except OverflowError:
        return None


def numbers_close(predicted: float | None, reference: float | None, rel_tol: float = 1e-9,
                  abs_tol: float = 0.0) -> bool:
    """``math.isclose`` that is False when either side is missing.

    >>> numbers_close(0.333, 1 / 3, abs_tol=1e-3), numbers_close(None, 1.0)
    (True, False)
    """
    if predicted is None or reference is None:
        return False
    return math.isclose(predicted, reference, rel_tol=rel_tol, abs_tol=abs_tol)


# --------------------------------------------------------------------------------- rewards


@register_reward("format")
def format_reward(prompts, completions, *, reasoning_tag: str = "reasoning", answer_tag: str = "answer",
                  **kwargs) -> list[float]:
    """1.0 when the completion is exactly ``<reasoning_tag>…</…>`` then ``<answer_tag>…</…>``, else 0.0.

    Whitespace around and between the two spans is allowed; the spans may hold any text
    except the two tags themselves.
    """
    pattern = tagged_format_pattern(reasoning_tag, answer_tag)
    return [float(pattern.fullmatch(completion_text(c).strip()) is not None) for c in completions]


@register_reward("correctness")
def correctness_reward(prompts, completions, answer, **kwargs) -> list[float | None]:
    """1.0 when the tagged answer matches the ``answer`` column; None where there is no answer."""
    return [None if ref is None else float(answers_match(extract_answer(c), ref))
            for c, ref in zip(completions, answer)]


@register_reward("exact_match")
def exact_match_reward(prompts, completions, answer=None, *, answer_tag: str = "answer",
                       **kwargs) -> list[float | None]:
    """1.0 when :func:`candidate_answer` equals the ``answer`` column after stripping both; else 0.0.

    None where the row has no answer (or there is no ``answer`` column).
    """
    references = answer if answer is not None else [None] * len(completions)
    return [None if ref is None else float(candidate_answer(c, answer_tag) == str(ref).strip())
            for c, ref in zip(completions, references)]


@register_reward("numeric_match")
def numeric_match_reward(prompts, completions, answer=None, *, answer_tag: str = "answer",
                         rel_tol: float = 1e-6, abs_tol: float = 1e-9, **kwargs) -> list[float | None]:
    """1.0 when the candidate answer and the ``answer`` column are numbers within tolerance.

    Both sides go through :func:`parse_number` (``1,234``, ``-3.5``, ``3/4``, ``50%``, ``$18``);
    a candidate that is not a number scores 0.0. The reference may also be a GSM8K solution
    (its ``#### 42`` line is used). None where there is no reference or it is not a number.
    """
    references = answer if answer is not None else [None] * len(completions)
    rewards: list[float | None] = []
    for completion, ref in zip(completions, references):
        gold = parse_number(gsm8k_answer(ref) if isinstance(ref, str) and "####" in ref else ref)
        if gold is None:
            rewards.append(None)
            continue
        predicted = parse_number(candidate_answer(completion, answer_tag))
        rewards.append(float(numbers_close(predicted, gold, rel_tol, abs_tol)))
    return rewards
