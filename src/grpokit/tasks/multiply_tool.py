"""Multiplying two 3-digit numbers with a calculator tool: the embedded default's agent task.

A 0.8M-parameter model cannot multiply 123 by 456 in its head, but it can copy the numbers into a
tool call and the tool's answer into its own. An episode the task rewards::

    user:       123*456
    assistant:  <tool_call>{"name": "multiply", "arguments": {"a": 123, "b": 456}}</tool_call>
    tool:       56088
    assistant:  <answer>56088</answer>

The SFT demonstrations come from a *noisy teacher* who uses the tool imperfectly: with
probability ``no_tool_rate`` it skips the tool and guesses (the leading digits right, the rest
made up), with ``argument_slip_rate`` it copies one digit of a factor wrong into the call, and
with ``copy_slip_rate`` it copies one digit of the tool's answer wrong. A model imitating it
succeeds about as often as the teacher (0.44 with the defaults); GRPO's correctness reward on
whole episodes teaches it to always call the tool and copy exactly.

>>> task = MultiplyToolTask()
>>> row = task.problems(1, seed=0)[0]
>>> row["prompt"], row["answer"]
([{'role': 'user', 'content': '964*494'}], '476216')
>>> task.is_correct([{"role": "assistant", "content": "<answer>476216</answer>"}], row)
True
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

from grpokit.agents.tool_calls import CLOSE_TAG, OPEN_TAG, parse_tool_calls
from grpokit.answers import answers_match, extract_answer
from grpokit.data import prompt_key


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: The first factor.
        b: The second factor.
    """
    return int(a) * int(b)


def tool_call(a: int, b: int) -> str:
    """The assistant turn that asks the tool for ``a * b``.

    >>> tool_call(12, 34)
    '<tool_call>{"name": "multiply", "arguments": {"a": 12, "b": 34}}</tool_call>'
    """
    return f"{OPEN_TAG}{json.dumps({'name': 'multiply', 'arguments': {'a': a, 'b': b}})}{CLOSE_TAG}"


def assistant_turns(completion) -> list[str]:
    """The assistant turns of an episode (a message list); a text is one turn."""
    if isinstance(completion, str):
        return [completion]
    return [m["content"] for m in completion if m.get("role") == "assistant"]


def final_turn(completion) -> str:
    """The text of the last assistant turn ("" when there is none)."""
    turns = assistant_turns(completion)
    return turns[-1] if turns else ""


def _slip(number: int, rng: random.Random) -> int:
    """``number`` with one digit changed (never the leading digit to 0)."""
    digits = list(str(number))
    at = rng.randrange(len(digits))
    digits[at] = rng.choice([d for d in "0123456789" if d != digits[at] and (at or d != "0")])
    return int("".join(digits))


@dataclass
class MultiplyToolTask:
    """Generator, verifier, tool and demonstrations for products of two 3-digit numbers."""

    no_tool_rate: float = 0.35
    argument_slip_rate: float = 0.2
    copy_slip_rate: float = 0.15
    name: str = "multiply_tool"

    @property
    def tools(self) -> list:
        """The tools an episode may call."""
        return [multiply]

    def problems(self, count: int, seed: int, exclude: set[str] = frozenset()) -> list[dict]:
        """``count`` distinct problems ``{"prompt": [user message], "answer"}`` whose prompts
        (as ``grpokit.data.prompt_key`` writes them) are not in ``exclude``."""
        rng, rows, seen = random.Random(seed), [], set(exclude)
        while len(rows) < count:
            a, b = rng.randint(100, 999), rng.randint(100, 999)
            prompt = [{"role": "user", "content": f"{a}*{b}"}]
            key = prompt_key(prompt)
            if key not in seen:
                seen.add(key)
                rows.append({"prompt": prompt, "answer": str(a * b)})
        return rows

    def demonstration(self, row: dict, rng: random.Random) -> list[dict]:
        """The noisy teacher's episode for ``row`` (see the module docstring)."""
        a, b = map(int, row["prompt"][-1]["content"].split("*"))
        product = a * b
        if rng.random() < self.no_tool_rate:
            guess = str(product)[:2] + "".join(rng.choice("0123456789") for _ in str(product)[2:])
            return [{"role": "assistant", "content": f"<answer>{guess}</answer>"}]
        if rng.random() < self.argument_slip_rate:
            a, b = (_slip(a, rng), b) if rng.random() < 0.5 else (a, _slip(b, rng))
        result = multiply(a, b)
        answer = _slip(result, rng) if rng.random() < self.copy_slip_rate else result
        return [{"role": "assistant", "content": tool_call(a, b)},
                {"role": "tool", "name": "multiply", "content": str(result)},
                {"role": "assistant", "content": f"<answer>{answer}</answer>"}]

    def sft_rows(self, count: int, seed: int, exclude: set[str] = frozenset()) -> list[dict]:
        """``count`` rows ``{"prompt", "completion", "answer"}``, the completion a whole episode."""
        rng = random.Random(seed + 1)
        return [{**row, "completion": self.demonstration(row, rng)} for row in self.problems(count, seed, exclude)]

    def is_correct(self, completion, row: dict) -> bool:
        """True when the episode's last turn answers the row's product."""
        return answers_match(extract_answer(final_turn(completion)), row["answer"])

    def is_well_formatted(self, completion) -> bool:
        """The episode's tool calls all parse and its last turn is exactly ``<answer>N</answer>``."""
        turns = assistant_turns(completion)
        calls_ok = all(not parse_tool_calls(t).errors for t in turns[:-1])
        last = turns[-1].strip() if turns else ""
        return calls_ok and last.startswith("<answer>") and last.endswith("</answer>") and last.count("<") == 2

    def extract_answer(self, completion) -> str | None:
        """The tagged answer of the episode's last turn."""
        return extract_answer(final_turn(completion))
