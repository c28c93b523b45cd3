"""Rows in: load a dataset (list, ``datasets.Dataset``, or a JSON/JSONL/CSV/Parquet file) and
validate its rows for GRPO (``prompt``) or SFT (``prompt`` + ``completion``, or ``messages``).

Row numbers in error messages are 0-based indices, the same index you would use
with ``rows[i]`` or ``dataset[i]``; rows of a JSON-lines file also name their line (1-based).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from grpokit.errors import DatasetError

#: File extension -> name of the ``datasets`` builder that reads it.
SUPPORTED_EXTENSIONS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}

PROMPT_EXPECTED = "expected a string or a list of chat messages"

#: Public dataset format -> (question column, solution column) (``grpokit.data.to_prompt_rows``).
PROMPT_FORMAT_COLUMNS = {"gsm8k": ("question", "answer"), "math": ("problem", "solution")}


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
                               f"{error.colno}): {short_repr(line, 120)}; expected one JSON object per line") from None
        rows.append(_json_row(row, path, f"line {number}"))
        lines.append(number)
    return rows, lines


def _json_row(row: Any, path: Path, where: str) -> dict:
    if not isinstance(row, dict):
        raise DatasetError(f"'{path}' {where} is a JSON {type(row).__name__} ({short_repr(row, 80)}); "
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
                           f"{short_repr(str(error), 300)})") from error
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
    return f"is {type(value).__name__} ({short_repr(value, 80)})"


def check_prompt_value(row: dict, key: str, where: str) -> None:
    """Raise DatasetError unless ``row[key]`` is a string or a valid message list (a key that
    is absent or None, as ``datasets`` fills missing keys, counts as missing)."""
    if row.get(key) is None:
        found = ", ".join(k for k, v in row.items() if v is not None) or "none"
        raise DatasetError(f"{where}: no '{key}' column (found columns: {found}); "
                           f"{PROMPT_EXPECTED}{format_hint(row, key)}")
    problem = _value_problem(row[key])
    if problem is not None:
        raise DatasetError(f"{where}: '{key}' {problem}; {PROMPT_EXPECTED}")


def format_hint(row: dict, key: str = "prompt") -> str:
    """What a row without ``prompt`` probably is, and how to read it.

    >>> format_hint({"question": "2+2?", "answer": "#### 4"})
    "; the row looks like GSM8K (question, answer): set data.format: gsm8k in the config (grpokit.data.to_prompt_rows(rows, 'gsm8k') in Python)"
    """
    if key != "prompt":
        return ""
    present = {k for k, v in row.items() if v is not None}
    for name, (question, solution) in PROMPT_FORMAT_COLUMNS.items():
        if {question, solution} <= present:
            label = "GSM8K" if name == "gsm8k" else "MATH"
            return (f"; the row looks like {label} ({question}, {solution}): set data.format: {name} in "
                    f"the config (grpokit.data.to_prompt_rows(rows, {name!r}) in Python)")
    if "messages" in present:
        return "; a 'messages' column is what SFT reads (grpokit sft); GRPO needs a 'prompt' per row"
    return ""


def row_location(rows: list[dict], index: int, source_name: str) -> str:
    return rows.where(index) if isinstance(rows, Rows) else f"{source_name} row {index}"


def check_rows_container(rows: Any, source_name: str) -> None:
    """Raise DatasetError if ``rows`` is empty or holds a non-dict."""
    name = rows.source if isinstance(rows, Rows) else source_name
    if len(rows) == 0:
        raise DatasetError(f"{name} is empty; expected at least one row")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DatasetError(f"{row_location(rows, i, source_name)}: is {type(row).__name__}; expected a dict")


def validate_prompt_rows(rows: list[dict], source_name: str = "dataset") -> list[dict]:
    """Check every row has a usable ``prompt``; return ``rows`` unchanged.

    >>> validate_prompt_rows([{"question": "2+2?", "answer": "4"}])
    Traceback (most recent call last):
    ...
    grpokit.errors.DatasetError: dataset row 0: no 'prompt' column (found columns: question, answer); expected a string or a list of chat messages; the row looks like GSM8K (question, answer): set data.format: gsm8k in the config (grpokit.data.to_prompt_rows(rows, 'gsm8k') in Python)
    """
    check_rows_container(rows, source_name)
    for i, row in enumerate(rows):
        check_prompt_value(row, "prompt", row_location(rows, i, source_name))
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
    check_rows_container(rows, source_name)
    return [_normalize_sft_row(row, row_location(rows, i, source_name)) for i, row in enumerate(rows)]


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
    check_prompt_value(row, "prompt", where)
    check_prompt_value(row, "completion", where)
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


def short_repr(value: Any, limit: int = 200) -> str:
    """``repr(value)`` cut to ``limit`` characters.

    >>> short_repr("x" * 10, limit=8)
    "'xxxx..."
    """
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
