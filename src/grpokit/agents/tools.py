"""Tools for agentic rollouts: plain or ``async`` Python functions, given to the chat template as
JSON schemas built from their type hints and Google-style docstrings (TRL's ``tools=``
contract), and run outside the training loop's thread with a per-call timeout.

Every call gets an answer for the model: the tool's return value as text, or an error message
(an unknown tool, arguments that do not fit its signature, an exception, no answer within the
timeout, a crashed process). With ``isolation="thread"`` (the default) a call runs in a daemon
thread; one that hangs is abandoned there, so it never stalls the step or the process's exit.
With ``isolation="process"`` each call runs in a forked child process, so a tool that kills or
crashes its process (``os._exit``, a segfault in an extension) ends only that child; the child
works on a copy of the trainer's memory, so a stateful tool's changes do not come back (use
threads for environments). Code from the model belongs in the built-in ``python`` tool, which
runs it in a fresh, limited interpreter (:mod:`grpokit.agents.python_tool`).

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
import multiprocessing
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from transformers.utils import get_json_schema
from transformers.utils.chat_template_utils import DocstringParsingException, TypeHintParsingException

from grpokit.agents.tool_calls import ToolCall
from grpokit.errors import ConfigError

#: ``ToolResult.error`` kinds, each counted in the step's metrics.
ERROR_KINDS = ("unknown_tool", "bad_arguments", "raised", "timeout", "crashed")


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
        isolation: ``"thread"`` or ``"process"`` (each call in a forked child; see above).
    """

    def __init__(self, tools: list[Callable], timeout_s: float = 10.0, max_chars: int = 2000,
                 isolation: str = "thread"):
        self.schemas = [tool_schema(fn) for fn in tools]
        self.tools = {schema["function"]["name"]: fn for schema, fn in zip(self.schemas, tools)}
        if len(self.tools) != len(tools):
            names = [schema["function"]["name"] for schema in self.schemas]
            raise ConfigError(f"tools: two tools share a name ({', '.join(sorted(names))}); names must be unique")
        if isolation not in ("thread", "process"):
            raise ConfigError(f"tool isolation is {isolation!r}; expected 'thread' or 'process'")
        self.timeout_s, self.max_chars, self.isolation = timeout_s, max_chars, isolation

    def run(self, calls: list[ToolCall]) -> list[ToolResult]:
        """Run ``calls`` concurrently; one result per call, in order, within about ``timeout_s``."""
        return run_tool_calls([(self, call) for call in calls])

    def start(self, call: ToolCall) -> "_Running | ToolResult":
        """Start ``call`` (or answer it at once when it cannot run)."""
        fn = self.tools.get(call.name)
        if fn is None:
            return ToolResult(call.name, f"error: unknown tool '{call.name}'; the tools are: "
                              f"{', '.join(self.tools)}", "unknown_tool", 0.0)
        try:
            inspect.signature(fn).bind(**call.arguments)
        except TypeError as error:
            return ToolResult(call.name, f"error: tool '{call.name}' got bad arguments: {error}", "bad_arguments", 0.0)
        return (_in_process if self.isolation == "process" else _in_thread)(fn, call)

    def finish(self, call: ToolCall, running: "_Running | ToolResult", deadline: float) -> ToolResult:
        """The result of a started call, waiting until ``deadline`` (``time.perf_counter()``) at most."""
        if isinstance(running, ToolResult):
            return running
        outcome = running.wait(deadline)
        seconds = time.perf_counter() - running.started
        if outcome is None:
            return ToolResult(call.name, f"error: tool '{call.name}' did not answer within {self.timeout_s:g} s",
                              "timeout", seconds)
        if "crashed" in outcome:
            return ToolResult(call.name, f"error: tool '{call.name}' crashed its process ({outcome['crashed']})",
                              "crashed", seconds)
        if "error" in outcome:
            error = outcome["error"]
            return ToolResult(call.name, f"error: tool '{call.name}' raised {type(error).__name__}: {error}",
                              "raised", seconds)
        return ToolResult(call.name, self._text(outcome["value"]), None, seconds)

    def _text(self, value: Any) -> str:
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        return text if len(text) <= self.max_chars else text[: self.max_chars] + " ...[cut]"


def run_tool_calls(calls: list[tuple[ToolBox, ToolCall]]) -> list[ToolResult]:
    """Run calls of several tool boxes (one per episode, say) concurrently; each box's calls
    get its own timeout from the moment all were started. One result per call, in order."""
    running = [box.start(call) for box, call in calls]
    now = time.perf_counter()
    return [box.finish(call, started, now + box.timeout_s) for (box, call), started in zip(calls, running)]


@dataclass
class _Running:
    """A started call: ``wait(deadline)`` gives its outcome dict, or None if it is still running."""

    wait: Callable[[float], dict | None]
    started: float


def _in_thread(fn: Callable, call: ToolCall) -> _Running:
    outcome: dict[str, Any] = {}
    thread = threading.Thread(target=_call, args=(fn, call.arguments, outcome), daemon=True,
                              name=f"grpokit-tool-{call.name}")
    thread.start()

    def wait(deadline: float) -> dict | None:
        thread.join(max(deadline - time.perf_counter(), 0.0))
        return None if thread.is_alive() else outcome

    return _Running(wait, time.perf_counter())


def _in_process(fn: Callable, call: ToolCall) -> _Running:
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_call_and_send, args=(fn, call.arguments, sender), daemon=True,
                              name=f"grpokit-tool-{call.name}")
    process.start()
    sender.close()

    def wait(deadline: float) -> dict | None:
        if not receiver.poll(max(deadline - time.perf_counter(), 0.0)):
            process.kill()
            return None
        try:
            return receiver.recv()
        except EOFError:  # the child ended without an answer
            process.join(1.0)
            code = process.exitcode
            return {"crashed": f"killed by {signal.Signals(-code).name}" if code and code < 0 else f"exit code {code}"}

    return _Running(wait, time.perf_counter())


def _call(fn: Callable, arguments: dict, outcome: dict) -> None:
    """Run one tool; its value or its exception lands in ``outcome``."""
    try:
        value = fn(**arguments)
        outcome["value"] = asyncio.run(value) if inspect.isawaitable(value) else value
    except BaseException as error:  # a tool's SystemExit must not end the worker silently
        outcome["error"] = error


def _call_and_send(fn: Callable, arguments: dict, sender) -> None:
    """In a tool's child process: run it and send its outcome back."""
    outcome: dict[str, Any] = {}
    _call(fn, arguments, outcome)
    try:
        sender.send(outcome)
    except Exception as error:  # an answer that cannot be pickled
        sender.send({"error": TypeError(f"its result could not be sent back: {error}")})
