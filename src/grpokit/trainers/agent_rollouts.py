"""How an on-policy trainer samples when it has tools, an environment factory or a rollout
function (TRL's ``tools=``, ``environment_factory=``, ``rollout_func=``; YAML ``tools``,
``environment``, ``rollout_func``).

With tools or an environment every completion is a multi-turn episode
(:func:`grpokit.agents.multi_turn.sample_episodes`): the prompts show the tool schemas, each
episode of an environment gets its own instance, reset with its row, and the reward functions
receive ``environments=`` and the prompts as reset left them. A verifiers environment (given
where an environment factory goes, or returned by it, as a ``load_environment()`` returns one)
runs its own rollouts on grpokit's sampler (:mod:`grpokit.agents.verifiers_env`), its rows are
the dataset when none is given, and its rubric's score is one more reward (weight 1). A rollout
function replaces the sampler altogether (:mod:`grpokit.agents.rollout_function`).
"""

from __future__ import annotations

import sys
import time

from grpokit.agents.environments import EMPTY_PROMPT, EnvironmentPool, reset_prompt
from grpokit.agents.episodes import EnvironmentTokens
from grpokit.agents.multi_turn import ToolEnvironment, episodes_to_rollout, sample_episodes
from grpokit.agents.rollout_function import rollout_from_output
from grpokit.agents.tools import ToolBox
from grpokit.errors import ConfigError
from grpokit.imports import import_object
from grpokit.sampling.sampler import Rollout


class AgentRollouts:
    """The tools, environments or rollout function of one trainer.

    Args:
        args: the trainer's config (``tools``, ``environment``, ``rollout_func``,
            ``tool_timeout_s``, ``tool_isolation``, ``max_tool_calling_iterations``).
        stage: the config section's name, for error messages (``grpo``).
        tools, environment_factory, rollout_func: the constructor's, added to the config's.
    """

    def __init__(self, args, stage: str, tools=(), environment_factory=None, rollout_func=None):
        named = [(t, f"tools[{i}]") for i, t in enumerate(tools)]
        named += [(t, f"{stage}.tools[{i}]") for i, t in enumerate(getattr(args, "tools", []))]
        functions = [import_object(t, what) if isinstance(t, str) else t for t, what in named]
        factory = environment_factory or _imported(getattr(args, "environment", None), f"{stage}.environment")
        self.rollout_func = rollout_func or _imported(getattr(args, "rollout_func", None), f"{stage}.rollout_func")
        if self.rollout_func is not None and (functions or factory is not None):
            raise ConfigError("rollout_func replaces grpokit's sampler, so it cannot be combined with tools or an "
                              "environment: run them inside your rollout function")
        isolation = getattr(args, "tool_isolation", "thread")
        self.verifiers_env = _verifiers_environment(factory)
        if self.verifiers_env is not None:
            if functions:
                raise ConfigError("a verifiers environment brings its own tools (vf.ToolEnv); pass no tools= with it")
            factory = None
        self.pool = EnvironmentPool(factory, functions, args.tool_timeout_s, isolation) if factory else None
        if self.pool is not None and isolation == "process":
            raise ConfigError("tool_isolation: process runs each call on a copy of the trainer's memory, so an "
                              "environment's state would not change; use tool_isolation: thread with environments")
        shared = ToolBox(functions, args.tool_timeout_s, isolation=isolation) if functions or factory else None
        self.environment = ToolEnvironment(shared) if shared is not None else None
        self.schemas = self.pool.schemas if self.pool is not None else shared.schemas if shared is not None else None
        self.reward_function = self.pool.reward_function if self.pool is not None else None
        if self.verifiers_env is not None:
            self.reward_function = _rubric_reward(type(self.verifiers_env).__name__)
        self.args, self.stats, self.environment_tokens = args, None, None

    @property
    def multi_turn(self) -> bool:
        return self.environment is not None or self.verifiers_env is not None

    @property
    def replaces_sampler(self) -> bool:
        return self.multi_turn or self.rollout_func is not None

    def own_rows(self, count: int) -> list[dict] | None:
        """The dataset an environment brings when the trainer is given none: a verifiers
        environment's rows, or ``count`` empty prompts that a factory's ``reset`` fills."""
        if self.verifiers_env is not None:
            return [dict(row) for row in self.verifiers_env.get_dataset()]
        return [{"prompt": EMPTY_PROMPT}] * count if self.pool is not None else None

    def start(self, tokenizer, rows: list[dict]) -> None:
        """Check the rows and keep the tokenizer's environment-message renderings."""
        if self.multi_turn:
            flat = [i for i, row in enumerate(rows) if isinstance(row.get("prompt"), str)]
            if flat:
                raise ConfigError(f"tools need chat prompts (a list of messages per row), so the chat template can "
                                  f"show the tools and the tool replies; train_dataset row {flat[0]} is text")
            self.environment_tokens = EnvironmentTokens(tokenizer)

    def sample(self, trainer, rows: list[dict], timings: dict) -> Rollout:
        """This rank's rows as a rollout: episodes, or the rollout function's completions."""
        started, group = time.perf_counter(), trainer.args.num_generations
        tokenizer = trainer.tokenizer
        if self.rollout_func is not None:
            prompts = [row["prompt"] for row in rows for _ in range(group)]
            output = self.rollout_func(prompts, trainer)
            rollout, extra = rollout_from_output(output, group, tokenizer.eos_token_id, tokenizer.pad_token_id,
                                                 expected=len(prompts))
            rollout.reward_kwargs = extra
            timings["generate"] = time.perf_counter() - started
            return rollout
        if self.verifiers_env is not None:
            return self._sample_verifiers(trainer, rows, timings, started)
        repeated = [row for row in rows for _ in range(group)]
        environment, reward_kwargs = self.environment, None
        if self.pool is not None:
            instances, toolboxes = self.pool.take(len(repeated), trainer.step_index)
            prompts = [reset_prompt(instance, row, f"train_dataset row {row['_index']}")
                       for instance, row in zip(instances, repeated)]
            prompt_ids = [trainer.encode(prompt, f"train_dataset row {row['_index']}")
                          for prompt, row in zip(prompts, repeated)]
            environment, reward_kwargs = environment.for_episodes(toolboxes), {"environments": instances,
                                                                               "prompts": prompts}
        else:
            prompt_ids = [trainer.prompt_ids[row["_index"]] for row in repeated]
        iterations = self.args.max_tool_calling_iterations
        with trainer.autocast():
            episodes, truncated, self.stats = sample_episodes(
                trainer.model, tokenizer, prompt_ids, group, trainer.sampling, environment,
                max_turns=iterations + 1 if iterations is not None else self.args.max_completion_length,
                max_tokens=self.args.max_completion_length, generator=trainer.generator,
                environment_tokens=self.environment_tokens)
        timings["generate"] = time.perf_counter() - started - self.stats.environment_seconds
        timings["environment"] = self.stats.environment_seconds
        rollout = episodes_to_rollout(episodes, truncated, group, tokenizer.pad_token_id)
        rollout.reward_kwargs = reward_kwargs
        return rollout

    def _sample_verifiers(self, trainer, rows: list[dict], timings: dict, started: float) -> Rollout:
        from grpokit.agents.verifiers_env import sample_verifiers_episodes

        own = [{key: value for key, value in row.items() if not key.startswith("_")} for row in rows]
        with trainer.autocast():
            episodes, truncated, rewards, self.stats = sample_verifiers_episodes(
                self.verifiers_env, trainer.model, trainer.tokenizer, own, trainer.args.num_generations,
                trainer.sampling, self.args.max_completion_length, trainer.generator, self.environment_tokens)
        timings["generate"] = time.perf_counter() - started - self.stats.environment_seconds
        timings["environment"] = self.stats.environment_seconds
        rollout = episodes_to_rollout(episodes, truncated, trainer.args.num_generations,
                                      trainer.tokenizer.pad_token_id)
        rollout.reward_kwargs = {"rubric_reward": rewards}
        return rollout


def _imported(path: str | None, where: str):
    return import_object(path, where) if path else None


def _verifiers_environment(candidate):
    """``candidate`` itself, or what it returns, when that is a verifiers environment; else None
    (a TRL environment factory). A verifiers environment means verifiers is imported already."""
    if candidate is None or "verifiers" not in sys.modules:
        return None
    from grpokit.agents.verifiers_env import verifiers

    environment_type = verifiers().Environment
    if isinstance(candidate, environment_type):
        return candidate
    if isinstance(candidate, type) or not callable(candidate):
        return None
    made = candidate()
    return made if isinstance(made, environment_type) else None


def _rubric_reward(name: str):
    """The reward function that hands on each episode's rubric score."""

    def reward(rubric_reward: list[float], **kwargs) -> list[float]:
        return list(rubric_reward)

    reward.__name__ = reward.__qualname__ = name
    return reward
