"""Datasets in, validated rows out.

A *row* is a plain ``dict``. GRPO training needs a ``prompt`` column holding either
a string or a list of chat messages (``{"role": ..., "content": ...}``); every other
column is passed to reward functions as a keyword (see :func:`extra_columns`).
SFT warm-up needs ``prompt`` + ``completion`` or a ``messages`` list.

Row numbers in error messages are 0-based indices, the same index you would use
with ``rows[i]`` or ``dataset[i]``; rows of a JSON-lines file also name their line (1-based).

>>> rows = load_rows([{"prompt": "2+2=", "answer": "4"}])
>>> validate_prompt_rows(rows) is rows
True
>>> extra_columns(rows)
['answer']
>>> stream = PromptStream(rows, seed=0)
>>> stream.next_batch(2)
[{'prompt': '2+2=', 'answer': '4'}, {'prompt': '2+2=', 'answer': '4'}]
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Iterator

from grpokit.errors import DatasetError

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "DatasetError",
    "PROMPT_FORMATS",
    "PromptStream",
    "prompt_key",
    "Rows",
    "SUPPORTED_EXTENSIONS",
    "boxed_answer",
    "encode_prompt",
    "extra_columns",
    "gsm8k_answer",
    "is_conversational",
    "load_rows",
    "render_prompt",
    "to_prompt_rows",
    "validate_prompt_rows",
    "validate_sft_rows",
]

#: File extension -> name of the ``datasets`` builder that reads it.
SUPPORTED_EXTENSIONS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}

_PROMPT_EXPECTED = "expected a string or a list of chat messages"


# ----------------------------------------------------------------------------- loading


class Rows(list):
    """Rows read from a file: a list of dicts that remembers where they came from, so errors can
    name the file and, for JSON lines, the line of each row."""

    def __init__(self, rows, source: str, lines: list[int] | None = None):
        super().__init__(rows)
        self.source, self.lines = source, lines

    def where(self, index: int) -> str:
        """``"data.jsonl row 2 (line 3)"``."""
        line = f" (line {self.lines[index]})" if self.lines and index < len(self.lines) else ""
        return f"{self.source} row {index}{line}"


def load_rows(source: Any) -> list[dict]:
    """Read ``source`` into a list of row dicts.

    Args:
        source: a ``datasets.Dataset`` (or a ``DatasetDict`` with a ``train`` split or
            a single split), a list of dicts, or a path (str / ``Path``) to a
            ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet`` file or to a directory
            written by ``Dataset.save_to_disk``.

    Returns:
        A new list of dicts, one per row (a :class:`Rows` for files).

    >>> load_rows([{"prompt": "hi"}])
    [{'prompt': 'hi'}]
    """
    if isinstance(source, (str, Path)):
        return _load_path(Path(source))
    if isinstance(source, Rows):  # keeps naming its file in errors
        return Rows(_check_dict_rows(source), source.source, source.lines)
    if isinstance(source, (list, tuple)):
        return _check_dict_rows(source)
    import datasets

    if isinstance(source, datasets.DatasetDict):
        source = _pick_split(source, "load_rows")
    if isinstance(source, datasets.Dataset):
        return source.to_list()
    raise TypeError(
        f"load_rows: expected a datasets.Dataset, a list of dicts or a file path, "
        f"found {type(source).__name__}"
    )


def _check_dict_rows(rows: list | tuple) -> list[dict]:
    """Copy a list of rows, checking that each one is a dict."""
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DatasetError(
                f"load_rows: list item {i} is {type(row).__name__}; expected a dict "
                f"mapping column name to value"
            )
    return [dict(row) for row in rows]


def _load_path(path: Path) -> Rows:
    """Read a data file or a ``save_to_disk`` directory.

    JSON and JSON lines are read here, one ``json.loads`` per line, so that an error names its
    line and a row without a column stays without it (``datasets`` fills missing keys with
    None); CSV, parquet and ``save_to_disk`` directories are read with ``datasets``.
    """
    if not path.exists():
        where = "" if path.is_absolute() else f" (looked in {Path.cwd()})"
        raise DatasetError(f"data file '{path}' does not exist{where}; expected a .jsonl, .json, .csv or "
                           f".parquet file or a save_to_disk directory")
    if path.is_dir():
        return Rows(_read_with_datasets(path, None), str(path))
    builder = SUPPORTED_EXTENSIONS.get(path.suffix.lower())
    if builder is None:
        supported = ", ".join(SUPPORTED_EXTENSIONS)
        raise DatasetError(f"cannot read '{path}': unknown extension '{path.suffix}'; supported: "
                           f"{supported}, or a save_to_disk directory")
    if builder == "json":
        rows, lines = _read_json(path)
    else:
        rows, lines = _read_with_datasets(path, builder), None
    if not rows:
        raise DatasetError(f"data file '{path}' holds no rows; expected one row per line (.jsonl) "
                           f"or a list of objects (.json)" if builder == "json" else
                           f"data file '{path}' holds no rows")
    return Rows(rows, str(path), lines)


def _read_json(path: Path) -> tuple[list[dict], list[int] | None]:
    """Rows of a JSON file (a list of objects) or of JSON lines (one object per line), and for
    JSON lines the line number of each row."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as error:
            raise DatasetError(f"'{path}' is not valid JSON: {error.msg} at line {error.lineno}, "
                               f"column {error.colno}") from None
        return [_json_row(row, path, f"item {i}") for i, row in enumerate(rows)], None
    rows, lines = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DatasetError(f"'{path}' line {number} is not valid JSON ({error.msg} at column "
                               f"{error.colno}): {_short(line, 120)}; expected one JSON object per line") from None
        rows.append(_json_row(row, path, f"line {number}"))
        lines.append(number)
    return rows, lines


def _json_row(row: Any, path: Path, where: str) -> dict:
    if not isinstance(row, dict):
        raise DatasetError(f"'{path}' {where} is a JSON {type(row).__name__} ({_short(row, 80)}); "
                           f"expected an object such as {{\"prompt\": \"...\", \"answer\": \"...\"}}")
    return row


def _read_with_datasets(path: Path, builder: str | None) -> list[dict]:
    """Rows of a CSV or parquet file (``builder``) or a ``save_to_disk`` directory (None)."""
    import datasets

    try:
        if builder is None:
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                loaded = _pick_split(loaded, f"load_rows('{path}')")
        else:
            loaded = datasets.load_dataset(builder, data_files=str(path), split="train")
    except DatasetError:
        raise
    except Exception as error:  # whatever the reader says about a file it cannot parse
        raise DatasetError(f"cannot read '{path}' with datasets ({type(error).__name__}: "
                           f"{_short(str(error), 300)})") from error
    return loaded.to_list()


def _pick_split(dataset_dict: Any, where: str) -> Any:
    """Return the ``train`` split, or the only split, of a ``DatasetDict``."""
    if "train" in dataset_dict:
        return dataset_dict["train"]
    if len(dataset_dict) == 1:
        return next(iter(dataset_dict.values()))
    raise DatasetError(
        f"{where}: DatasetDict has splits {sorted(dataset_dict)} and none is 'train'; "
        f"pass one split, e.g. dataset_dict['{sorted(dataset_dict)[0]}']"
    )


# -------------------------------------------------------------------------- validation


def is_conversational(prompt: Any) -> bool:
    """True if ``prompt`` is a non-empty list of chat-message dicts.

    >>> is_conversational([{"role": "user", "content": "hi"}])
    True
    >>> is_conversational("hi"), is_conversational([])
    (False, False)
    """
    return (
        isinstance(prompt, (list, tuple))
        and len(prompt) > 0
        and all(isinstance(m, dict) and "role" in m for m in prompt)
    )


def _message_problem(messages: Any) -> str | None:
    """Describe what is wrong with a chat-message list, or None if it is fine.

    >>> _message_problem([{"role": "user"}])
    "message 0 has no 'content' key (found keys: role)"
    """
    if len(messages) == 0:
        return "is an empty list"
    for j, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"message {j} is {type(message).__name__}, not a dict"
        for key in ("role", "content"):
            if key not in message:
                found = ", ".join(map(str, message)) or "none"
                return f"message {j} has no '{key}' key (found keys: {found})"
            if not isinstance(message[key], str):
                value = message[key]
                return f"message {j} '{key}' is {type(value).__name__} ({value!r}), not a str"
    return None


def _value_problem(value: Any) -> str | None:
    """Describe why ``value`` is not a usable prompt/completion, or None if it is."""
    if isinstance(value, str):
        return "is an empty string" if value == "" else None
    if isinstance(value, (list, tuple)):
        return _message_problem(value)
    return f"is {type(value).__name__} ({_short(value, 80)})"


def _check_value(row: dict, key: str, where: str) -> None:
    """Raise DatasetError unless ``row[key]`` is a string or a valid message list (a key that
    is absent or None, as ``datasets`` fills missing keys, counts as missing)."""
    if row.get(key) is None:
        found = ", ".join(k for k, v in row.items() if v is not None) or "none"
        raise DatasetError(f"{where}: no '{key}' column (found columns: {found}); "
                           f"{_PROMPT_EXPECTED}{format_hint(row, key)}")
    problem = _value_problem(row[key])
    if problem is not None:
        raise DatasetError(f"{where}: '{key}' {problem}; {_PROMPT_EXPECTED}")


def format_hint(row: dict, key: str = "prompt") -> str:
    """What a row without ``prompt`` probably is, and how to read it.

    >>> format_hint({"question": "2+2?", "answer": "#### 4"})
    "; the row looks like GSM8K (question, answer): set data.format: gsm8k in the config (grpokit.data.to_prompt_rows(rows, 'gsm8k') in Python)"
    """
    if key != "prompt":
        return ""
    present = {k for k, v in row.items() if v is not None}
    for name, (question, solution, _, _) in PROMPT_FORMATS.items():
        if {question, solution} <= present:
            label = "GSM8K" if name == "gsm8k" else "MATH"
            return (f"; the row looks like {label} ({question}, {solution}): set data.format: {name} in "
                    f"the config (grpokit.data.to_prompt_rows(rows, {name!r}) in Python)")
    if "messages" in present:
        return "; a 'messages' column is what SFT reads (grpokit sft); GRPO needs a 'prompt' per row"
    return ""


def _where(rows: list[dict], index: int, source_name: str) -> str:
    return rows.where(index) if isinstance(rows, Rows) else f"{source_name} row {index}"


def _check_rows_container(rows: Any, source_name: str) -> None:
    """Raise DatasetError if ``rows`` is empty or holds a non-dict."""
    name = rows.source if isinstance(rows, Rows) else source_name
    if len(rows) == 0:
        raise DatasetError(f"{name} is empty; expected at least one row")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DatasetError(f"{_where(rows, i, source_name)}: is {type(row).__name__}; expected a dict")


def validate_prompt_rows(rows: list[dict], source_name: str = "dataset") -> list[dict]:
    """Check every row has a usable ``prompt``; return ``rows`` unchanged.

    >>> validate_prompt_rows([{"question": "2+2?", "answer": "4"}])
    Traceback (most recent call last):
    ...
    grpokit.errors.DatasetError: dataset row 0: no 'prompt' column (found columns: question, answer); expected a string or a list of chat messages; the row looks like GSM8K (question, answer): set data.format: gsm8k in the config (grpokit.data.to_prompt_rows(rows, 'gsm8k') in Python)
    """
    _check_rows_container(rows, source_name)
    for i, row in enumerate(rows):
        _check_value(row, "prompt", _where(rows, i, source_name))
    return rows


def validate_sft_rows(rows: list[dict], source_name: str = "dataset") -> list[dict]:
    """Check SFT rows and normalize each to ``{"prompt": ..., "completion": ...}``.

    A row either has ``prompt`` and ``completion`` (both strings or both message
    lists) or a ``messages`` list whose last message is from the assistant; then
    ``prompt`` is all messages but the last and ``completion`` is ``[last]``.
    Other columns are dropped.

    >>> rows = [{"messages": [{"role": "user", "content": "hi"},
    ...                       {"role": "assistant", "content": "hello"}]}]
    >>> validate_sft_rows(rows)
    [{'prompt': [{'role': 'user', 'content': 'hi'}], 'completion': [{'role': 'assistant', 'content': 'hello'}]}]
    """
    _check_rows_container(rows, source_name)
    return [_normalize_sft_row(row, _where(rows, i, source_name)) for i, row in enumerate(rows)]


def _normalize_sft_row(row: dict, where: str) -> dict:
    """Return ``{"prompt", "completion"}`` for one SFT row, raising DatasetError."""
    if row.get("prompt") is None and row.get("messages") is not None:
        return _split_messages(row["messages"], where)
    if row.get("prompt") is None or row.get("completion") is None:
        found = ", ".join(k for k, v in row.items() if v is not None) or "none"
        raise DatasetError(
            f"{where}: expected 'prompt' and 'completion' columns or a 'messages' column "
            f"(found columns: {found})"
        )
    _check_value(row, "prompt", where)
    _check_value(row, "completion", where)
    if isinstance(row["prompt"], str) != isinstance(row["completion"], str):
        kinds = [("a string" if isinstance(row[k], str) else "a message list") for k in ("prompt", "completion")]
        raise DatasetError(
            f"{where}: 'prompt' is {kinds[0]} but 'completion' is {kinds[1]}; "
            f"use the same format (both strings or both message lists)"
        )
    return {"prompt": row["prompt"], "completion": row["completion"]}


def _split_messages(messages: Any, where: str) -> dict:
    """Split a conversation into all-but-last (prompt) and last (completion)."""
    if not isinstance(messages, (list, tuple)):
        raise DatasetError(f"{where}: 'messages' is {type(messages).__name__}; expected a list of chat messages")
    problem = _message_problem(messages)
    if problem is not None:
        raise DatasetError(f"{where}: 'messages' {problem}; expected a list of chat messages")
    if len(messages) < 2 or messages[-1]["role"] != "assistant":
        roles = ", ".join(m["role"] for m in messages)
        raise DatasetError(
            f"{where}: 'messages' must hold at least one prompt message followed by a "
            f"final 'assistant' message (found roles: {roles})"
        )
    return {"prompt": list(messages[:-1]), "completion": [messages[-1]]}


# --------------------------------------------------------------------------- rendering


def render_prompt(prompt: str | list[dict], tokenizer: Any) -> str:
    """Turn a prompt into the text the model is fed.

    A string is returned unchanged; a message list goes through
    ``tokenizer.apply_chat_template(..., add_generation_prompt=True)``.

    >>> render_prompt("2+2=", tokenizer=None)
    '2+2='
    """
    if isinstance(prompt, str):
        return prompt
    if not is_conversational(prompt):
        raise DatasetError(
            f"render_prompt: prompt is {type(prompt).__name__} ({_short(prompt, 80)}); "
            f"{_PROMPT_EXPECTED}"
        )
    if getattr(tokenizer, "chat_template", None) is None:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(
            f"render_prompt: tokenizer '{name}' has no chat_template, so chat-message "
            f"prompts cannot be rendered; set tokenizer.chat_template or use string prompts"
        )
    return tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)


def encode_prompt(prompt: str | list[dict], tokenizer: Any, where: str) -> list[int]:
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
    text = render_prompt(prompt, tokenizer)
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


def _short(value: Any, limit: int = 200) -> str:
    """``repr(value)`` cut to ``limit`` characters.

    >>> _short("x" * 10, limit=8)
    "'xxxx..."
    """
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------ public dataset formats

#: System prompt asking for the tags the ``format`` and answer rewards read.
DEFAULT_SYSTEM_PROMPT = (
    "Think through the problem step by step, then give the final answer alone. "
    "Respond in exactly this format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>"
)


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


#: Dataset format -> (question column, solution column, final-answer extractor, what it expects).
PROMPT_FORMATS = {
    "gsm8k": ("question", "answer", gsm8k_answer, "a worked solution ending in '#### <answer>'"),
    "math": ("problem", "solution", boxed_answer, "a solution holding \\boxed{<answer>}"),
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
    _check_rows_container(rows, source_name)
    out = []
    for i, row in enumerate(rows):
        for key in (question_key, solution_key):
            if not isinstance(row.get(key), str):
                found = ", ".join(map(str, row)) or "none"
                problem = (f"no '{key}' column (found columns: {found})" if key not in row
                           else f"'{key}' is {type(row[key]).__name__} ({_short(row[key], 80)})")
                raise DatasetError(f"{_where(rows, i, source_name)}: {problem}; "
                                   f"{format} rows need '{question_key}' and '{solution_key}' strings")
        final = extract(row[solution_key])
        if final is None:
            raise DatasetError(f"{_where(rows, i, source_name)}: cannot find the final answer in '{solution_key}' "
                               f"({_short(row[solution_key], 120)}); expected {expected}")
        out.append({"prompt": _question_prompt(row[question_key], system_prompt, chat), "answer": final.strip()})
    return out


def _question_prompt(question: str, system_prompt: str | None, chat: bool) -> str | list[dict]:
    """Chat messages or one string holding the optional system prompt and the question."""
    if chat:
        system = [{"role": "system", "content": system_prompt}] if system_prompt else []
        return system + [{"role": "user", "content": question}]
    return f"{system_prompt}\n\n{question}" if system_prompt else question


# ------------------------------------------------------------------------------ stream


class PromptStream:
    """Endless, resumable stream of rows, reshuffled every epoch.

    The order of epoch ``e`` is a pure function of ``(seed, e)``, so
    ``(epoch, position, seed)`` is the whole state: a stream rebuilt from
    :meth:`state_dict` continues with exactly the rows the original would have
    produced. Batches run across epoch boundaries.

    Args:
        rows: the rows to stream (not copied up front; each yielded row is a shallow copy).
        seed: shuffling seed.
        shuffle: if False, rows come in dataset order every epoch.

    >>> stream = PromptStream([{"prompt": p} for p in "abc"], seed=1)
    >>> first = stream.next_batch(2)
    >>> saved = stream.state_dict()
    >>> rest = stream.next_batch(4)
    >>> resumed = PromptStream([{"prompt": p} for p in "abc"])
    >>> resumed.load_state_dict(saved)
    >>> resumed.next_batch(4) == rest
    True
    >>> sorted(r["prompt"] for r in first + rest[:1])  # one full epoch
    ['a', 'b', 'c']
    """

    def __init__(self, rows: list[dict], seed: int = 0, shuffle: bool = True):
        if len(rows) == 0:
            raise DatasetError("PromptStream: got 0 rows; expected at least one row")
        self.rows = rows
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0
        self.position = 0
        self._order = self._epoch_order(self.epoch)

    def _epoch_order(self, epoch: int) -> list[int]:
        """Row indices for ``epoch``: a permutation determined by (seed, epoch)."""
        order = list(range(len(self.rows)))
        if self.shuffle:
            random.Random(f"{self.seed}:{epoch}").shuffle(order)
        return order

    def next_batch(self, n: int) -> list[dict]:
        """Return the next ``n`` rows, starting a new shuffled epoch when needed."""
        if n < 1:
            raise ValueError(f"PromptStream.next_batch: n must be >= 1, found {n}")
        batch = []
        while len(batch) < n:
            if self.position == len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._epoch_order(self.epoch)
            batch.append(dict(self.rows[self._order[self.position]]))
            self.position += 1
        return batch

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        return self.next_batch(1)[0]

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "position", "seed", "num_rows"}``; plain ints, JSON-safe."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "num_rows": len(self.rows)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a :meth:`state_dict`; ``num_rows`` is checked when present."""
        missing = [k for k in ("epoch", "position", "seed") if k not in state]
        if missing:
            raise KeyError(f"PromptStream.load_state_dict: state is missing {missing}; found keys {sorted(state)}")
        num_rows = state.get("num_rows", len(self.rows))
        if num_rows != len(self.rows) or not 0 <= state["position"] <= len(self.rows):
            raise ValueError(
                f"PromptStream.load_state_dict: state was saved for {num_rows} rows at position "
                f"{state['position']}, but this stream has {len(self.rows)} rows; resume with the same dataset"
            )
        self.seed, self.epoch, self.position = int(state["seed"]), int(state["epoch"]), int(state["position"])
        self._order = self._epoch_order(self.epoch)
