"""Tool calls read out of a model turn, in the Hermes / Qwen convention that chat templates with
tool support render and expect back::

    <tool_call>
    {"name": "multiply", "arguments": {"a": 3, "b": 4}}
    </tool_call>

A turn may hold several calls. A call that cannot be run (not JSON, no ``name``, ``arguments``
not an object, a tag left open) becomes an error message addressed to the model, so the episode
goes on and the model can learn the format from it; the errors are counted per episode.

>>> turn = parse_tool_calls('Let me compute. <tool_call>{"name": "multiply", "arguments": {"a": 3, "b": 4}}</tool_call>')
>>> turn.content, turn.calls
('Let me compute.', [ToolCall(name='multiply', arguments={'a': 3, 'b': 4})])
>>> parse_tool_calls("<tool_call>{multiply(3, 4)}</tool_call>").errors[0][:70]
'tool call 1 is not valid JSON (Expecting property name enclosed in dou'
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

OPEN_TAG, CLOSE_TAG = "<tool_call>", "</tool_call>"
EXPECTED = f'write {OPEN_TAG}{{"name": "<tool>", "arguments": {{...}}}}{CLOSE_TAG}'


@dataclass(frozen=True)
class ToolCall:
    """One call: the tool's name and its keyword arguments."""

    name: str
    arguments: dict[str, Any]


@dataclass
class ParsedTurn:
    """A model turn: its text outside the calls, the calls to run, and one error message per
    call that could not be read (in the order they appear)."""

    content: str
    calls: list[ToolCall] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def wants_tools(self) -> bool:
        """The episode goes on: the turn asked for a tool (well-formed or not)."""
        return bool(self.calls or self.errors)


def parse_tool_calls(text: str, open_tag: str = OPEN_TAG, close_tag: str = CLOSE_TAG) -> ParsedTurn:
    """Split a turn into its content and its tool calls.

    ``arguments`` may also be a JSON string holding the object (some models write it so).

    >>> parse_tool_calls("The answer is 12.").wants_tools
    False
    >>> parse_tool_calls('<tool_call>{"name": "add"}</tool_call>').calls
    [ToolCall(name='add', arguments={})]
    >>> parse_tool_calls('<tool_call>{"arguments": {}}').errors
    ['tool call 1 has no closing </tool_call>; write <tool_call>{"name": "<tool>", "arguments": {...}}</tool_call>']
    """
    pattern = re.compile(rf"{re.escape(open_tag)}(.*?)(?:{re.escape(close_tag)}|$)", re.DOTALL)
    calls, errors, content = [], [], []
    position = 0
    for number, match in enumerate(pattern.finditer(text), 1):
        content.append(text[position : match.start()])
        position = match.end()
        if not match.group(0).endswith(close_tag):
            errors.append(f"tool call {number} has no closing {close_tag}; {EXPECTED}")
            continue
        call = _read_call(match.group(1).strip(), number)
        (calls if isinstance(call, ToolCall) else errors).append(call)
    content.append(text[position:])
    return ParsedTurn(" ".join(part.strip() for part in content if part.strip()), calls, errors)


def _read_call(body: str, number: int) -> ToolCall | str:
    """The call in one block's JSON, or the error message that says what is wrong with it."""
    try:
        payload = json.loads(body)
    except json.JSONDecodeError as error:
        return f"tool call {number} is not valid JSON ({error.msg} at character {error.pos}); {EXPECTED}"
    if not isinstance(payload, dict) or not isinstance(payload.get("name"), str) or not payload["name"]:
        return f"tool call {number} has no \"name\" string; {EXPECTED}"
    arguments = payload.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            pass
    if not isinstance(arguments, dict):
        return f"tool call {number} ({payload['name']}): \"arguments\" must be an object of named values; {EXPECTED}"
    return ToolCall(payload["name"], arguments)
