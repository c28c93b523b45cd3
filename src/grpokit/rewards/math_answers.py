r"""The ``math`` reward: a completion's final answer checked for equivalence with math-verify.

The candidate is the completion's ``<answer>`` span when it has one, else its last
``\boxed{}``, else the whole text (then math-verify finds the answer itself). The
reference is the ``answer`` column: a plain number, a LaTeX expression, a GSM8K solution
(its ``#### 42`` line) or a MATH solution (its last ``\boxed{}``). Equivalence is
math-verify's: ``\frac{1}{2}`` equals ``0.5``, ``3/4`` equals ``0.75``, ``x = 5`` equals
``5``. A span is read as LaTeX (as if between ``$…$``), so ``\sqrt{2}`` and ``(1, 2)``
keep their meaning; only if that yields nothing is it read as free text.

math-verify guards each parse and comparison with a ``SIGALRM`` timeout, which only works
in a process's main thread; in any other thread the timeout is turned off.

>>> math_reward(["q"] * 4, ["<answer>0.5</answer>", r"so \boxed{\dfrac{1}{2}}", "<answer>2</answer>", "1/2"],
...             answer=[r"\frac{1}{2}"] * 4)
[1.0, 1.0, 0.0, 1.0]
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from grpokit.answers import boxed_answer, gsm8k_answer
from grpokit.answers import completion_text, tag_content
from grpokit.rewards.lookup import register_reward

__all__ = ["is_equivalent", "math_reward", "parse_answer", "reference_text"]

logger = logging.getLogger(__name__)


def reference_text(answer: Any) -> str | None:
    r"""The reference answer in a dataset's ``answer`` value; None when there is none.

    >>> reference_text("6 * 7 = 42\n#### 42"), reference_text(r"so $\boxed{\frac{1}{2}}$"), reference_text(3)
    ('42', '\\frac{1}{2}', '3')
    >>> reference_text(None), reference_text("  ")
    (None, None)
    """
    if answer is None:
        return None
    text = str(answer)
    if "####" in text:
        text = gsm8k_answer(text) or ""
    boxed = boxed_answer(text)
    return (boxed if boxed is not None else text).strip() or None


def _timeout(seconds: int | None) -> int | None:
    """``seconds`` in the main thread; None elsewhere, where math-verify's SIGALRM cannot work."""
    return seconds if threading.current_thread() is threading.main_thread() else None


def _parse(text: str, timeout_seconds: int | None) -> list:
    """math-verify's ``parse``; an empty list when it fails or times out."""
    from math_verify import parse

    try:
        return parse(text, parsing_timeout=_timeout(timeout_seconds))
    except Exception as exc:  # math-verify raises its own TimeoutException and sympy errors
        logger.debug("math-verify could not parse %r: %s", text, exc)
        return []


def parse_answer(span: str, timeout_seconds: int | None = 5) -> list:
    r"""Parse an answer span: as LaTeX math unless it is already delimited, then as free text.

    >>> [str(x) for x in parse_answer(r"\frac{3}{4}")], [str(x) for x in parse_answer("(1, 2)")][0]
    (['3/4', '\\frac{3}{4}'], 'Interval.open(1, 2)')
    >>> parse_answer("")
    []
    """
    if not span.strip():
        return []
    delimited = "$" in span or "\\(" in span or "\\[" in span
    parsed = _parse(span if delimited else f"${span}$", timeout_seconds)
    return parsed or (_parse(span, timeout_seconds) if not delimited else [])


def is_equivalent(gold: list, predicted: list, timeout_seconds: int | None = 5) -> bool:
    """math-verify's ``verify(gold, predicted)``; False when either side is empty or it fails.

    >>> is_equivalent(parse_answer("0.5"), parse_answer(r"\\frac{1}{2}")), is_equivalent([], [1])
    (True, False)
    """
    from math_verify import verify

    if not gold or not predicted:
        return False
    try:
        return bool(verify(gold, predicted, timeout_seconds=_timeout(timeout_seconds)))
    except Exception as exc:
        logger.debug("math-verify could not compare %r with %r: %s", gold, predicted, exc)
        return False


def _predicted(completion: Any, answer_tag: str, timeout_seconds: int | None) -> list:
    """The parsed candidate: the tagged span, else the last box, else the whole text."""
    text = completion_text(completion)
    span = tag_content(text, answer_tag)
    if span is None:
        span = boxed_answer(text)
    return parse_answer(span, timeout_seconds) if span is not None else _parse(text, timeout_seconds)


@register_reward("math")
def math_reward(prompts, completions, answer=None, *, answer_tag: str = "answer", timeout_seconds: int | None = 5,
                **kwargs) -> list[float | None]:
    """1.0 when the completion's answer is mathematically equivalent to the ``answer`` column, else 0.0.

    None where the row has no answer or math-verify cannot read the reference.
    ``timeout_seconds`` bounds each parse and comparison (main thread only; None: no limit).
    """
    references = answer if answer is not None else [None] * len(completions)
    rewards: list[float | None] = []
    for completion, reference in zip(completions, references):
        gold_text = reference_text(reference)
        gold = parse_answer(gold_text, timeout_seconds) if gold_text is not None else []
        if not gold:
            rewards.append(None)
            continue
        predicted = _predicted(completion, answer_tag, timeout_seconds)
        rewards.append(float(is_equivalent(gold, predicted, timeout_seconds)))
    return rewards
