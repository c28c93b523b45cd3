"""Datasets in, validated rows out.

A *row* is a plain ``dict``. GRPO training needs a ``prompt`` column holding either
a string or a list of chat messages (``{"role": ..., "content": ...}``); every other
column is passed to reward functions as a keyword (see :func:`extra_columns`).
SFT warm-up needs ``prompt`` + ``completion`` or a ``messages`` list.

Row numbers in error messages are 0-based indices, the same index you would use
with ``rows[i]`` or ``dataset[i]``.

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

import random
from pathlib import Path
from typing import Any, Iterator

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "DatasetError",
    "PROMPT_FORMATS",
    "PromptStream",
    "SUPPORTED_EXTENSIONS",
    "boxed_answer",
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


class DatasetError(ValueError):
    """A dataset row is missing a column or holds a value of the wrong shape."""


# ----------------------------------------------------------------------------- loading


def load_rows(source: Any) -> list[dict]:
    """Read ``source`` into a list of row dicts.

    Args:
        source: a ``datasets.Dataset`` (or a ``DatasetDict`` with a ``train`` split or
            a single split), a list of dicts, or a path (str / ``Path``) to a
            ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet`` file or to a directory
            written by ``Dataset.save_to_disk``.

    Returns:
        A new list of dicts, one per row.

    >>> load_rows([{"prompt": "hi"}])
    [{'prompt': 'hi'}]
    """
    if isinstance(source, (str, Path)):
        return _load_path(Path(source))
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


def _load_path(path: Path) -> list[dict]:
    """Read a data file or a ``save_to_disk`` directory with ``datasets``."""
    import datasets

    if not path.exists():
        raise FileNotFoundError(f"load_rows: no such file or directory: '{path}'")
    if path.is_dir():
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            loaded = _pick_split(loaded, f"load_rows('{path}')")
        return loaded.to_list()
    builder = SUPPORTED_EXTENSIONS.get(path.suffix.lower())
    if builder is None:
        supported = ", ".join(SUPPORTED_EXTENSIONS)
        raise ValueError(
            f"load_rows: cannot read '{path}': unknown extension '{path.suffix}'; "
            f"supported: {supported}, or a save_to_disk directory"
        )
    dataset = datasets.load_dataset(builder, data_files=str(path), split="train")
    return dataset.to_list()


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


def _check_value(row: dict, key: str, index: int, source_name: str) -> None:
    """Raise DatasetError unless ``row[key]`` is a string or a valid message list."""
    if key not in row:
        found = ", ".join(map(str, row)) or "none"
        raise DatasetError(
            f"{source_name} row {index}: no '{key}' column (found columns: {found}); "
            f"{_PROMPT_EXPECTED}"
        )
    problem = _value_problem(row[key])
    if problem is not None:
        raise DatasetError(f"{source_name} row {index}: '{key}' {problem}; {_PROMPT_EXPECTED}")


def _check_rows_container(rows: Any, source_name: str) -> None:
    """Raise DatasetError if ``rows`` is empty or holds a non-dict."""
    if len(rows) == 0:
        raise DatasetError(f"{source_name} is empty; expected at least one row")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DatasetError(f"{source_name} row {i}: is {type(row).__name__}; expected a dict")


def validate_prompt_rows(rows: list[dict], source_name: str = "dataset") -> list[dict]:
    """Check every row has a usable ``prompt``; return ``rows`` unchanged.

    >>> validate_prompt_rows([{"question": "2+2?", "answer": "4"}])
    Traceback (most recent call last):
    ...
    grpokit.data.DatasetError: dataset row 0: no 'prompt' column (found columns: question, answer); expected a string or a list of chat messages
    """
    _check_rows_container(rows, source_name)
    for i, row in enumerate(rows):
        _check_value(row, "prompt", i, source_name)
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
    return [_normalize_sft_row(row, i, source_name) for i, row in enumerate(rows)]


def _normalize_sft_row(row: dict, index: int, source_name: str) -> dict:
    """Return ``{"prompt", "completion"}`` for one SFT row, raising DatasetError."""
    where = f"{source_name} row {index}"
    if "prompt" not in row and "messages" in row:
        return _split_messages(row["messages"], where)
    if "prompt" not in row or "completion" not in row:
        found = ", ".join(map(str, row)) or "none"
        raise DatasetError(
            f"{where}: expected 'prompt' and 'completion' columns or a 'messages' column "
            f"(found columns: {found})"
        )
    _check_value(row, "prompt", index, source_name)
    _check_value(row, "completion", index, source_name)
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
                raise DatasetError(f"{source_name} row {i}: {problem}; "
                                   f"{format} rows need '{question_key}' and '{solution_key}' strings")
        final = extract(row[solution_key])
        if final is None:
            raise DatasetError(f"{source_name} row {i}: cannot find the final answer in '{solution_key}' "
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
