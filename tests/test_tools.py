"""Tool calls parsed from model turns, and tools run with timeouts and isolation."""

from __future__ import annotations

import asyncio
import time

import pytest

from grpokit.agents.python_tool import python_tool
from grpokit.agents.tool_calls import ToolCall, parse_tool_calls
from grpokit.agents.tools import ToolBox, tool_schema
from grpokit.errors import ConfigError


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first term.
        b: The second term.
    """
    return a + b


def hang(seconds: float) -> str:
    """Sleep, then answer.

    Args:
        seconds: How long to sleep.
    """
    time.sleep(seconds)
    return "late"


def fail(message: str) -> str:
    """Raise.

    Args:
        message: The exception's message.
    """
    raise ValueError(message)


async def lookup(key: str) -> str:
    """Look a key up.

    Args:
        key: The key.
    """
    await asyncio.sleep(0.01)
    return {"x": "1"}.get(key, "missing")


# ------------------------------------------------------------------------------ parsing


def test_several_calls_and_the_text_around_them():
    turn = parse_tool_calls('First <tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call> then '
                            '<tool_call>{"name": "lookup", "arguments": "{\\"key\\": \\"x\\"}"}</tool_call>')
    assert turn.content == "First then"
    assert turn.calls == [ToolCall("add", {"a": 1, "b": 2}), ToolCall("lookup", {"key": "x"})]
    assert turn.errors == [] and turn.wants_tools


@pytest.mark.parametrize("body, problem", [
    ('{"name": "add", "arguments": {"a": 1,}}', "is not valid JSON"),
    ('{"arguments": {"a": 1}}', 'has no "name" string'),
    ('["add", 1, 2]', 'has no "name" string'),
    ('{"name": "add", "arguments": [1, 2]}', '"arguments" must be an object'),
])
def test_a_malformed_call_is_an_error_message_for_the_model_and_the_turn_goes_on(body, problem):
    turn = parse_tool_calls(f'<tool_call>{body}</tool_call> <tool_call>{{"name": "add", "arguments": {{"a": 1, "b": 1}}}}</tool_call>')
    assert len(turn.errors) == 1 and problem in turn.errors[0] and turn.errors[0].startswith("tool call 1 ")
    assert '<tool_call>{"name": "<tool>", "arguments": {...}}</tool_call>' in turn.errors[0]
    assert turn.calls == [ToolCall("add", {"a": 1, "b": 1})]


def test_a_turn_without_calls_ends_the_episode():
    turn = parse_tool_calls("<answer>12</answer>")
    assert not turn.wants_tools and turn.content == "<answer>12</answer>"


# ------------------------------------------------------------------------------ running


def test_schemas_come_from_type_hints_and_docstrings():
    schema = tool_schema(add)["function"]
    assert schema["name"] == "add" and schema["description"] == "Add two integers."
    assert schema["parameters"]["properties"]["a"] == {"type": "integer", "description": "The first term."}


def test_a_tool_without_a_docstring_is_a_config_error_naming_it():
    def bare(x: int) -> int:
        return x

    with pytest.raises(ConfigError, match="tool .*bare: .*Google-style docstring"):
        ToolBox([bare])


def test_results_errors_and_async_tools():
    box = ToolBox([add, fail, lookup], timeout_s=5)
    results = box.run([ToolCall("add", {"a": 2, "b": 3}), ToolCall("fail", {"message": "boom"}),
                       ToolCall("lookup", {"key": "x"}), ToolCall("add", {"a": 1}), ToolCall("sub", {})])
    assert [r.content for r in results] == [
        "5", "error: tool 'fail' raised ValueError: boom", "1",
        "error: tool 'add' got bad arguments: missing a required argument: 'b'",
        "error: unknown tool 'sub'; the tools are: add, fail, lookup"]
    assert [r.error for r in results] == [None, "raised", None, "bad_arguments", "unknown_tool"]


def test_a_hanging_tool_times_out_without_holding_the_others():
    box = ToolBox([hang, add], timeout_s=0.5)
    started = time.perf_counter()
    results = box.run([ToolCall("hang", {"seconds": 30}), ToolCall("add", {"a": 1, "b": 1}),
                       ToolCall("hang", {"seconds": 30})])
    assert time.perf_counter() - started < 5  # two hanging calls share one deadline
    assert [r.error for r in results] == ["timeout", None, "timeout"]
    assert results[0].content == "error: tool 'hang' did not answer within 0.5 s" and results[1].content == "2"


def test_long_answers_are_cut():
    box = ToolBox([lookup], max_chars=3)
    assert box.run([ToolCall("lookup", {"key": "nope"})])[0].content == "mis ...[cut]"


# ------------------------------------------------------------------------------ python


def test_python_runs_in_a_fresh_process_in_an_empty_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "secret.txt").write_text("run file")
    python = python_tool(timeout_s=20)
    assert python("print(sum(range(10)))") == "45"
    listing, environment = python("import os; print(os.listdir('.')); print(sorted(os.environ))").splitlines()
    assert listing == "[]" and "HOME" not in environment and "PATH" not in environment
    assert "ZeroDivisionError" in python("1 / 0")


def test_python_that_kills_its_process_hangs_or_eats_memory_is_told_so():
    python = python_tool(timeout_s=30, cpu_s=1, memory_mb=256)  # 1 s of CPU may take longer on a busy machine
    assert python("import os; os.kill(os.getpid(), 9)") == "error: the program was killed by signal SIGKILL"
    assert python("while True: pass") == "error: the program used up its 1 s of CPU time"
    assert python_tool(timeout_s=2)("import time; time.sleep(30)") == "error: the program did not finish within 2 s"
    assert "MemoryError" in python("x = bytearray(1024 * 2**20)")
    box = ToolBox([python], timeout_s=10)  # as a tool: its schema and a call
    assert box.schemas[0]["function"]["parameters"]["required"] == ["code"]
    assert box.run([ToolCall("python", {"code": "print(2 ** 10)"})])[0].content == "1024"


def test_the_tool_environment_answers_each_call_and_ends_episodes_without_calls():
    from grpokit.agents.multi_turn import EpisodeStats, ToolEnvironment

    stats = EpisodeStats()
    replies = ToolEnvironment(ToolBox([add, fail], timeout_s=5)).respond([0, 1, 2], [
        '<tool_call>{"name": "add", "arguments": {"a": 2, "b": 2}}</tool_call>',
        "<answer>4</answer>",
        '<tool_call>{"name": "fail", "arguments": {"message": "no"}}</tool_call> <tool_call>{oops}</tool_call>',
    ], stats)
    assert replies[0] == [{"role": "tool", "name": "add", "content": "4"}]
    assert replies[1] is None
    assert replies[2][0]["content"].startswith("error: tool call 2 is not valid JSON")
    assert replies[2][1] == {"role": "tool", "name": "fail", "content": "error: tool 'fail' raised ValueError: no"}
    assert (stats.tool_calls, stats.malformed_calls, dict(stats.tool_errors)) == (2, 1, {"raised": 1})


def test_the_trainer_names_the_config_key_of_a_tool_it_cannot_import_and_needs_chat_prompts(tiny_model, char_tokenizer,
                                                                                         tmp_path):
    from grpokit import GRPOConfig, GRPOTrainer
    from grpokit.errors import ImportPathError

    def build(args, rows=({"prompt": "sum a1:"},), tools=None):
        return GRPOTrainer(model=tiny_model, reward_funcs=[lambda prompts, completions, **kw: [0.0] * len(completions)],
                           args=args, train_dataset=list(rows), processing_class=char_tokenizer, tools=tools)

    with pytest.raises(ImportPathError, match=r"^grpo\.tools\[0\] 'no_such_module:fn'"):
        build(GRPOConfig(output_dir=str(tmp_path), tools=["no_such_module:fn"]))
    with pytest.raises(ConfigError, match="tools need chat prompts"):
        build(GRPOConfig(output_dir=str(tmp_path)), tools=[add])
