"""Tools for agentic rollouts: plain or ``async`` Python functions, given to the chat template as
JSON schemas built from their type hints and Google-style docstrings (TRL's ``tools=``
contract), and run outside the training loop's thread with a per-call timeout.

Every call gets an answer for the model: the tool's return value as text, or an error message
(an unknown tool, arguments that do not fit its signature, an exception, no answer within the
timeout). A call that hangs is abandoned in a daemon thread, so it never stalls the step or the
process's exit; code that can crash or exhaust its process belongs in a subprocess, as the
built-in ``python`` tool does (:mod:`grpokit.agents.python_tool`).

>>> def multiply(a: int, b: int) -> int:
...     '''Multiply two integers.
...
...     Args:
...         a: The first factor.
...         b: The second factor.
...     '''
...     return a * b
>>> box = ToolBox([multiply], timeout_s=5)
>>> [r.content for r in box.run([ToolCall("multiply", {"a": 3, "b": 4}), ToolCall("divide", {})])]
['12', "error: unknown tool 'divide'; the tools are: multiply"]
>>> box.schemas[0]["function"]["parameters"]["required"]
['a', 'b']
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from transformers.utils import get_json_schema
from transformers.utils.chat_template_utils import DocstringParsingException, TypeHintParsingException

from grpokit.agents.tool_calls import ToolCall
from grpokit.errors import ConfigError

#: ``ToolResult.error`` kinds, each counted in the step's metrics.
ERROR_KINDS = ("unknown_tool", "bad_arguments", "raised", "timeout")


@dataclass(frozen=True)
class ToolResult:
    """What a call returned to the model (``content``), why it failed (``error``, one of
    :data:`ERROR_KINDS`, or None) and how long it took."""

    name: str
    content: str
    error: str | None
    seconds: float


def tool_schema(fn: Callable) -> dict:
    """The chat-template schema of ``fn`` (``{"type": "function", "function": {...}}``).

    Raises:
        ConfigError: naming the function, when its docstring or type hints cannot describe it.
    """
    try:
        return get_json_schema(fn)
    except (DocstringParsingException, TypeHintParsingException) as error:
        name = getattr(fn, "__qualname__", repr(fn))
        raise ConfigError(f"tool {name}: {error}. A tool needs a type hint on every argument and a "
                          "Google-style docstring with a description and an 'Args:' line per argument") from None


class ToolBox:
    """Named tools, their schemas, and concurrent, time-limited calls.

    Args:
        tools: functions (plain or ``async``); each is known by its ``__name__``.
        timeout_s: seconds a call may take before the model is told it timed out.
        max_chars: a longer answer is cut to this many characters (the rest elided).
    """

    def __init__(self, tools: list[Callable], timeout_s: float = 10.0, max_chars: int = 2000):
        self.schemas = [tool_schema(fn) for fn in tools]
        self.tools = {schema["function"]["name"]: fn for schema, fn in zip(self.schemas, tools)}
        if len(self.tools) != len(tools):
            names = [schema["function"]["name"] for schema in self.schemas]
            raise ConfigError(f"tools: two tools share a name ({', '.join(sorted(names))}); names must be unique")
        self.timeout_s, self.max_chars = timeout_s, max_chars

    def run(self, calls: list[ToolCall]) -> list[ToolResult]:
        """Run ``calls`` concurrently; one result per call, in order, within about ``timeout_s``."""
        pending = [self._start(call) for call in calls]
        deadline = time.perf_counter() + self.timeout_s
        return [self._finish(call, started, deadline) for call, started in zip(calls, pending)]

    def _start(self, call: ToolCall) -> tuple[threading.Thread, dict, float] | ToolResult:
        fn = self.tools.get(call.name)
        if fn is None:
            return ToolResult(call.name, f"error: unknown tool '{call.name}'; the tools are: "
                              f"{', '.join(self.tools)}", "unknown_tool", 0.0)
        try:
            inspect.signature(fn).bind(**call.arguments)
        except TypeError as error:
            return ToolResult(call.name, f"error: tool '{call.name}' got bad arguments: {error}", "bad_arguments", 0.0)
        outcome: dict[str, Any] = {}
        thread = threading.Thread(target=_call, args=(fn, call.arguments, outcome), daemon=True,
                                  name=f"grpokit-tool-{call.name}")
        thread.start()
        return thread, outcome, time.perf_counter()

    def _finish(self, call: ToolCall, started, deadline: float) -> ToolResult:
        if isinstance(started, ToolResult):
            return started
        thread, outcome, tic = started
        thread.join(max(deadline - time.perf_counter(), 0.0))
        seconds = time.perf_counter() - tic
        if thread.is_alive():
            return ToolResult(call.name, f"error: tool '{call.name}' did not answer within {self.timeout_s:g} s",
                              "timeout", seconds)
        if "error" in outcome:
            error = outcome["error"]
            return ToolResult(call.name, f"error: tool '{call.name}' raised {type(error).__name__}: {error}",
                              "raised", seconds)
        return ToolResult(call.name, self._text(outcome["value"]), None, seconds)

    def _text(self, value: Any) -> str:
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        return text if len(text) <= self.max_chars else text[: self.max_chars] + " ...[cut]"


def _call(fn: Callable, arguments: dict, outcome: dict) -> None:
    """Run one tool in its own thread; its value or its exception lands in ``outcome``."""
    try:
        value = fn(**arguments)
        outcome["value"] = asyncio.run(value) if inspect.isawaitable(value) else value
    except BaseException as error:  # a tool's SystemExit must not end the worker silently
        outcome["error"] = error
