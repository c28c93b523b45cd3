"""TRL's ``environment_factory=``: a class (or any callable) whose instances are stateful
environments, one per episode.

An instance's ``reset(**row)`` starts an episode: it receives the dataset row (``prompt`` and
every other column) and returns None or a string appended to the prompt's last message (with no
dataset the prompt is one empty user message, so the string is the prompt). Its public methods
(no leading underscore, not ``reset`` or ``get_reward``) are its tools, schemas from their type
hints and docstrings as for ``tools=``. An optional ``get_reward()`` (plain or ``async``) scores
the episode from the instance's state: it becomes one more reward function, named after the
class, with weight 1. Reward functions also receive ``environments=`` (one instance per
completion).

Instances are made once and reused: a step hands out as many as it has episodes (more are made
when a step needs more), and every sampling round of a step gets fresh ones.

>>> class Counter:
...     def reset(self, target=3, **row):
...         self.count, self.target = 0, target
...         return f" Reach {target}."
...     def get_reward(self) -> float:
...         return float(self.count == self.target)
...     def increment(self, step: int) -> int:
...         '''Add to the counter.
...
...         Args:
...             step: How much to add.
...         '''
...         self.count += step
...         return self.count
>>> pool = EnvironmentPool(Counter, tools=[], timeout_s=5)
>>> [schema["function"]["name"] for schema in pool.schemas], pool.reward_function.__name__
(['increment'], 'Counter')
>>> instances, boxes = pool.take(2, step=0)
>>> reset_prompt(instances[0], {"prompt": [{"role": "user", "content": "Count."}], "target": 2}, "row 0")
[{'role': 'user', 'content': 'Count. Reach 2.'}]
>>> reset_prompt(instances[1], {}, "row 1")  # no dataset: the reset text is the prompt
[{'role': 'user', 'content': ' Reach 3.'}]
>>> boxes[0].tools["increment"](2), pool.reward_function(environments=instances)
(2, [1.0, 0.0])
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, Callable

from grpokit.agents.tools import ToolBox
from grpokit.errors import ConfigError

RESERVED = ("reset", "get_reward")
EMPTY_PROMPT = [{"role": "user", "content": ""}]  # the prompt of an environment that owns its data


def tool_methods(instance: Any) -> list[Callable]:
    """The instance's public methods other than ``reset`` and ``get_reward``: its tools."""
    return [method for name, method in inspect.getmembers(instance, predicate=inspect.ismethod)
            if name not in RESERVED and not name.startswith("_")]


class EnvironmentPool:
    """Environment instances of ``factory``, each with its tool box (its methods and ``tools``).

    Raises:
        ConfigError: when ``factory`` is not callable or its instances have no ``reset``.
    """

    def __init__(self, factory: Callable[[], Any], tools: list[Callable], timeout_s: float,
                 isolation: str = "thread"):
        if not callable(factory):
            raise ConfigError(f"environment_factory must be a class or a function that makes an environment; "
                              f"got {type(factory).__name__}")
        self.factory, self.tools, self.timeout_s, self.isolation = factory, tools, timeout_s, isolation
        self.instances: list[Any] = []
        self.toolboxes: list[ToolBox] = []
        self.handed_out, self.step = 0, None
        first = self._make()
        self.schemas = self.toolboxes[0].schemas
        self.reward_function = environment_reward(type(first)) if callable(getattr(first, "get_reward", None)) else None

    def take(self, count: int, step: int) -> tuple[list[Any], list[ToolBox]]:
        """``count`` instances not yet handed out in training step ``step``, and their tool boxes."""
        if step != self.step:
            self.handed_out, self.step = 0, step
        while len(self.instances) < self.handed_out + count:
            self._make()
        picked = slice(self.handed_out, self.handed_out + count)
        self.handed_out += count
        return self.instances[picked], self.toolboxes[picked]

    def _make(self) -> Any:
        instance = self.factory()
        name = getattr(self.factory, "__qualname__", repr(self.factory))
        if not callable(getattr(instance, "reset", None)):
            raise ConfigError(f"environment_factory {name}: its environments need a reset(**row) method that "
                              "starts an episode and returns None or text to append to the prompt")
        self.instances.append(instance)
        self.toolboxes.append(ToolBox(self.tools + tool_methods(instance), self.timeout_s, isolation=self.isolation))
        return instance


def reset_prompt(instance: Any, row: dict, where: str) -> list[dict]:
    """Start an episode: ``instance.reset(**row)`` (grpokit's own ``_``-keys left out), and the
    row's prompt with what it returned appended to the last message."""
    prompt = row.get("prompt") or EMPTY_PROMPT
    observation = instance.reset(**{key: value for key, value in row.items() if not key.startswith("_")})
    if observation is None:
        return list(prompt)
    if not isinstance(observation, str):
        raise ConfigError(f"{type(instance).__name__}.reset for {where} returned {type(observation).__name__}; "
                          "expected None or a string to append to the prompt")
    return [*prompt[:-1], {**prompt[-1], "content": prompt[-1]["content"] + observation}]


def environment_reward(environment_class: type) -> Callable:
    """The reward function of environments that score themselves (``get_reward``)."""

    def reward(environments: list, **kwargs) -> list[float]:
        values = [environment.get_reward() for environment in environments]
        return [asyncio.run(v) if inspect.iscoroutine(v) else v for v in values]

    reward.__name__ = reward.__qualname__ = environment_class.__name__
    return reward

