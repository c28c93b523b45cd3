"""Built-in verifiable tasks, by the name ``data.task`` gives, with options from
``data.task_options``.

A task generates problems (``problems(count, seed, exclude) -> [{"prompt", "answer", ...}]``)
and verifies completions (``is_correct(completion, row) -> bool``); ``digit_sum`` also writes
SFT demonstrations and preference pairs; a task with ``tools`` (``multiply_tool``) is trained and
evaluated as multi-turn episodes with them.
"""

from __future__ import annotations

import dataclasses

from grpokit.errors import ConfigError
from grpokit.tasks.digit_sum import DigitSumTask
from grpokit.tasks.multiply_tool import MultiplyToolTask
from grpokit.tasks.reasoning_gym import ReasoningGymTask

TASKS = {"digit_sum": DigitSumTask, "multiply_tool": MultiplyToolTask, "reasoning_gym": ReasoningGymTask}


def get_task(name: str, **settings):
    """The task registered as ``name`` built with ``settings``; unknown names and options list
    the valid ones."""
    if name not in TASKS:
        raise ConfigError(f"data.task: unknown task {name!r}; built-in tasks: {', '.join(sorted(TASKS))}")
    fields = [f.name for f in dataclasses.fields(TASKS[name]) if f.name != "name"]
    unknown = sorted(set(settings) - set(fields))
    if unknown:
        raise ConfigError(f"data.task_options: task {name!r} has no option(s) {unknown}; it takes: {', '.join(fields)}")
    return TASKS[name](**settings)


__all__ = ["DigitSumTask", "MultiplyToolTask", "ReasoningGymTask", "TASKS", "get_task"]
