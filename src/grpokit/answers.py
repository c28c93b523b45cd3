"""Reading the answer out of a completion or a reference solution: the tagged answer
(``<answer>…</answer>``, or any tag), the last ``\\boxed{}``, a GSM8K ``####`` line, and numbers
written as people write them. Pure string functions, used by the rewards, the tasks and the
evaluation alike (this module imports nothing from grpokit).

>>> extract_answer("<reasoning>4,11</reasoning><answer> 11 </answer>")
'11'
>>> answers_match("12.0", 12), parse_number("1,234")
(True, 1234.0)
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

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


# ----------------------------------------------------------------------- reference solutions


def gsm8k_answer(text: Any) -> str | None:
    r"""The final answer of a GSM8K solution: the text after its last ``####``, commas removed.

    None when there is no ``####`` or nothing follows it.

    >>> gsm8k_answer("She has 40 + 2 = <<40+2=42>>42 apples.\n#### 42")
    '42'
    >>> gsm8k_answer("#### 1,250 "), gsm8k_answer("no marker"), gsm8k_answer("#### ")
    ('1250', None, None)
    """
    if not isinstance(text, str) or "####" not in text:
        return None
    final = text.rsplit("####", 1)[1].strip().replace(",", "")
    return final or None


_BOX_MARKERS = ("\\boxed{", "\\fbox{")


def boxed_answer(text: Any) -> str | None:
    r"""The content of the last top-level ``\boxed{…}`` (or ``\fbox{…}``), nested braces kept.

    Escaped braces ``\{`` and ``\}`` do not count. None when there is no box or its
    braces do not close.

    >>> boxed_answer(r"so $x = \boxed{\frac{1}{2}}$ and \boxed{\{1, 2\}}.")
    '\\{1, 2\\}'
    >>> boxed_answer(r"\boxed{\frac{\sqrt{3}}{2}}"), boxed_answer(r"\boxed{3"), boxed_answer("3")
    ('\\frac{\\sqrt{3}}{2}', None, None)
    """
    if not isinstance(text, str):
        return None
    found, position = None, 0
    while True:
        starts = [(text.find(m, position), m) for m in _BOX_MARKERS]
        starts = [(i, m) for i, m in starts if i >= 0]
        if not starts:
            return found
        start, marker = min(starts)
        closed = _closing_brace(text, start + len(marker))
        if closed is None:
            return found
        found, position = text[start + len(marker): closed], closed + 1


def _closing_brace(text: str, begin: int) -> int | None:
    r"""Index of the ``}`` closing a ``{`` just before ``begin``; None if it never closes.

    A backslash escapes the next character, so ``\}`` does not close.

    >>> _closing_brace(r"{a{b}\}c}d", 1)
    8
    """
    depth, i = 1, begin
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None
