"""Prompts: render a prompt (a string or chat messages) with the tokenizer's chat template, encode
it, and turn public dataset formats (GSM8K, MATH) into GRPO rows."""

from __future__ import annotations

from typing import Any

from grpokit.answers import boxed_answer, gsm8k_answer
from grpokit.data.rows import (PROMPT_EXPECTED, PROMPT_FORMAT_COLUMNS, check_rows_container, short_repr, row_location,
                               is_conversational)
from grpokit.errors import DatasetError


# --------------------------------------------------------------------------- rendering


def render_prompt(prompt: str | list[dict], tokenizer: Any, tools: list[dict] | None = None) -> str:
    """Turn a prompt into the text the model is fed.

    A string is returned unchanged; a message list goes through
    ``tokenizer.apply_chat_template(..., add_generation_prompt=True)``, with the ``tools``' schemas
    when given (a template that supports tools shows them to the model).

    >>> render_prompt("2+2=", tokenizer=None)
    '2+2='
    """
    if isinstance(prompt, str):
        return prompt
    if not is_conversational(prompt):
        raise DatasetError(
            f"render_prompt: prompt is {type(prompt).__name__} ({short_repr(prompt, 80)}); "
            f"{PROMPT_EXPECTED}"
        )
    if getattr(tokenizer, "chat_template", None) is None:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(
            f"render_prompt: tokenizer '{name}' has no chat_template, so chat-message "
            f"prompts cannot be rendered; set tokenizer.chat_template or use string prompts"
        )
    return tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True, tools=tools)


def encode_prompt(prompt: str | list[dict], tokenizer: Any, where: str, tools: list[dict] | None = None) -> list[int]:
    """Token ids of the rendered prompt; a :class:`DatasetError` naming ``where`` when the text
    holds characters the tokenizer has no token for (they would silently become its unknown
    token, e.g. ``é`` for the embedded default's character vocabulary).

    >>> from grpokit.models import build_char_tokenizer
    >>> encode_prompt("sum a1:", build_char_tokenizer(), "row 0")[:3]
    [35, 37, 29]
    >>> encode_prompt("café", build_char_tokenizer(), "row 3")
    Traceback (most recent call last):
    ...
    grpokit.errors.DatasetError: row 3: the tokenizer has no token for 'é', which would become '<pad>'; remove or replace those characters (the embedded default reads digits, ASCII letters, punctuation, space and newline)
    """
    text = render_prompt(prompt, tokenizer, tools)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    unknown = getattr(tokenizer, "unk_token_id", None)
    if unknown is not None and unknown in ids and tokenizer.unk_token not in text:
        missing = sorted({c for c in text if tokenizer(c, add_special_tokens=False)["input_ids"] == [unknown]})
        raise DatasetError(f"{where}: the tokenizer has no token for {''.join(missing)!r}, which would become "
                           f"{tokenizer.unk_token!r}; remove or replace those characters (the embedded default "
                           f"reads digits, ASCII letters, punctuation, space and newline)")
    return ids


def prompt_key(prompt: str | list[dict]) -> str:
    """A hashable form of a prompt, for sets of prompts (chat messages are lists of dicts).

    >>> prompt_key("sum a1:"), prompt_key([{"role": "user", "content": "hi"}])
    ('sum a1:', "[{'role': 'user', 'content': 'hi'}]")
    """
    return prompt if isinstance(prompt, str) else repr(prompt)


def extra_columns(rows: list[dict]) -> list[str]:
    """Column names other than ``prompt``, in first-seen order over all rows.

    >>> extra_columns([{"prompt": "a", "answer": 1}, {"prompt": "b", "answer": 2, "id": 7}])
    ['answer', 'id']
    """
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(k for k in row if k != "prompt"))
    return list(seen)


# ------------------------------------------------------------------ public dataset formats

#: System prompt asking for the tags the ``format`` and answer rewards read.
DEFAULT_SYSTEM_PROMPT = (
    "Think through the problem step by step, then give the final answer alone. "
    "Respond in exactly this format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>"
)


#: Dataset format -> (question column, solution column, final-answer extractor, what it expects).
PROMPT_FORMATS = {
    "gsm8k": (*PROMPT_FORMAT_COLUMNS["gsm8k"], gsm8k_answer, "a worked solution ending in '#### <answer>'"),
    "math": (*PROMPT_FORMAT_COLUMNS["math"], boxed_answer, "a solution holding \\boxed{<answer>}"),
}


def to_prompt_rows(rows: list[dict], format: str = "gsm8k", system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
                   chat: bool = True, source_name: str = "dataset") -> list[dict]:
    r"""Turn GSM8K rows (``question``, ``answer``) or MATH rows (``problem``, ``solution``)
    into GRPO rows ``{"prompt", "answer"}``, ``answer`` being the final answer alone.

    Args:
        rows: rows as read by :func:`load_rows`.
        format: ``"gsm8k"`` or ``"math"`` (see :data:`PROMPT_FORMATS`).
        system_prompt: instructions put before the question; None or "" for none.
        chat: True builds chat messages (a system message, then the question as the user
            message); False builds one string, the system prompt and the question separated
            by a blank line.
        source_name: names the dataset in errors.

    >>> rows = [{"question": "What is 6 times 7?", "answer": "6 * 7 = 42\n#### 42"}]
    >>> to_prompt_rows(rows, system_prompt="Be brief.")
    [{'prompt': [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'What is 6 times 7?'}], 'answer': '42'}]
    >>> to_prompt_rows([{"problem": "Halve 1.", "solution": "$\\boxed{\\frac{1}{2}}$"}], "math", None, chat=False)
    [{'prompt': 'Halve 1.', 'answer': '\\frac{1}{2}'}]
    """
    if format not in PROMPT_FORMATS:
        raise ValueError(f"to_prompt_rows: unknown format {format!r}; expected one of {', '.join(PROMPT_FORMATS)}")
    question_key, solution_key, extract, expected = PROMPT_FORMATS[format]
    check_rows_container(rows, source_name)
    out = []
    for i, row in enumerate(rows):
        for key in (question_key, solution_key):
            if not isinstance(row.get(key), str):
                found = ", ".join(map(str, row)) or "none"
                problem = (f"no '{key}' column (found columns: {found})" if key not in row
                           else f"'{key}' is {type(row[key]).__name__} ({short_repr(row[key], 80)})")
                raise DatasetError(f"{row_location(rows, i, source_name)}: {problem}; "
                                   f"{format} rows need '{question_key}' and '{solution_key}' strings")
        final = extract(row[solution_key])
        if final is None:
            raise DatasetError(f"{row_location(rows, i, source_name)}: cannot find the final answer in '{solution_key}' "
                               f"({short_repr(row[solution_key], 120)}); expected {expected}")
        out.append({"prompt": _question_prompt(row[question_key], system_prompt, chat), "answer": final.strip()})
    return out


def _question_prompt(question: str, system_prompt: str | None, chat: bool) -> str | list[dict]:
    """Chat messages or one string holding the optional system prompt and the question."""
    if chat:
        system = [{"role": "system", "content": system_prompt}] if system_prompt else []
        return system + [{"role": "user", "content": question}]
    return f"{system_prompt}\n\n{question}" if system_prompt else question
