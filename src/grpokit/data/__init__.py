"""Datasets in, validated rows out: ``rows`` (loading, validation), ``prompts`` (chat-template
rendering, public formats), ``stream`` (the resumable prompt stream).

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

from grpokit.data.prompts import (DEFAULT_SYSTEM_PROMPT, PROMPT_FORMATS, encode_prompt, extra_columns, prompt_key,
                                  render_prompt, to_prompt_rows)
from grpokit.data.rows import (SUPPORTED_EXTENSIONS, Rows, is_conversational, load_rows, validate_prompt_rows,
                               validate_sft_rows)
from grpokit.data.stream import PromptStream, shuffled_batches
from grpokit.errors import DatasetError

__all__ = ["DEFAULT_SYSTEM_PROMPT", "DatasetError", "PROMPT_FORMATS", "PromptStream", "Rows", "SUPPORTED_EXTENSIONS",
           "encode_prompt", "extra_columns", "is_conversational", "load_rows", "prompt_key", "render_prompt",
           "shuffled_batches", "to_prompt_rows", "validate_prompt_rows", "validate_sft_rows"]
