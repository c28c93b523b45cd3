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


from grpokit.answers import (answers_match, candidate_answer, completion_text, extract_answer,
                             numbers_close, parse_number, tagged_format_pattern, gsm8k_answer)
from grpokit.rewards.lookup import register_reward

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
