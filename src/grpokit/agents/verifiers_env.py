"""Multi-turn episodes from a verifiers environment, run unchanged on grpokit's sampler.

verifiers' classic ``Environment`` API (``vf.SingleTurnEnv``, ``vf.MultiTurnEnv``,
``vf.ToolEnv`` and their subclasses, scored by a ``vf.Rubric``; verifiers 0.3.1 keeps it as
``verifiers.legacy``, answering at ``import verifiers as vf``, and 0.4 dropped it) asks a
``vf.Client`` for every model turn. Each episode here is one ``env.rollout`` (the env's own
loop: its prompt, ``env_response``, stop conditions and tool calls) with a client of its own:
verifiers' chat-completions client, its conversions of messages, tools and replies unchanged,
whose requests go to a shared
:class:`~grpokit.agents.sampler_client.BatchedSampler` instead of a server. The sampler keeps
each episode's tokens as sampled and decodes the turns of all waiting rollouts together. The G
rollouts of a row are then scored together by ``env.rubric.score_group`` and cleaned up, as
``Environment.run_group`` does (which takes one client for the whole group, so it cannot tell
which rollout sent a request, nor when one has ended).

A rollout that ended in a verifiers error (``state["error"]``: an empty reply, a tool that
raised one of the env's ``stop_errors``, a failed sandbox) keeps its episode and its rubric
reward, and the error is in ``stats.errors``; prime-rl trains on none of such a rollout's
tokens. A rollout cut by the token budget ends as verifiers ends one whose context is full
(``vf.OverlongPromptError``: ``state["prompt_too_long"]``), truncated.
"""

from __future__ import annotations

import asyncio
import copy
import time
from dataclasses import dataclass, field
from functools import cache

import torch

from grpokit.agents.episodes import Episode, EnvironmentTokens
from grpokit.agents.multi_turn import EpisodeStats
from grpokit.agents.sampler_client import BatchedSampler, ContextFull
from grpokit.errors import ConfigError, MissingDependencyError
from grpokit.sampling.sampler import SamplingParams

INSTALL = "pip install 'grpokit[agents]' (verifiers 0.3.1)"


@dataclass
class VerifiersEpisodeStats(EpisodeStats):
    """:class:`EpisodeStats` with each rollout's verifiers error (``"Type: message"``), or None."""

    errors: list[str | None] = field(default_factory=list)


def verifiers():
    """The verifiers package with its classic environment API, or a ConfigError naming how to install it."""
    try:
        import verifiers as vf
    except ImportError:
        raise MissingDependencyError(f"verifiers environments need the verifiers package: {INSTALL}") from None
    if not hasattr(vf, "MultiTurnEnv"):
        raise MissingDependencyError(
            f"verifiers {vf.__version__} has no vf.MultiTurnEnv: its 0.4 releases replaced the classic environment "
            f"API (vf.SingleTurnEnv, vf.MultiTurnEnv, vf.ToolEnv, vf.Rubric) with verifiers.v1 tasksets and "
            f"harnesses; grpokit runs classic environments: {INSTALL}")
    return vf


def sample_verifiers_episodes(env, model, tokenizer, rows: list[dict], group_size: int, params: SamplingParams,
                              max_tokens: int, generator: torch.Generator | None = None,
                              environment_tokens: EnvironmentTokens | None = None,
                              ) -> tuple[list[Episode], list[bool], list[float], VerifiersEpisodeStats]:
    """``group_size`` episodes of ``env`` per row of its dataset (``env.get_dataset()``'s rows);
    returns them (row order, groups contiguous), whether each was truncated, the rubric's reward
    of each, and their statistics. ``max_tokens`` is each episode's budget of sampled and
    environment tokens after its prompt, ``params.max_new_tokens`` the most tokens of one turn."""
    vf = verifiers()
    if not isinstance(env, vf.Environment):
        raise ConfigError(f"expected a verifiers environment (a vf.Environment such as vf.SingleTurnEnv, "
                          f"vf.MultiTurnEnv or vf.ToolEnv, as an environment's load_environment() returns), "
                          f"got {type(env).__name__}")
    if group_size < 1 or not rows:
        raise ConfigError(f"expected rows and group_size >= 1, got {len(rows)} rows and group_size={group_size}")
    inputs = [_rollout_input(row, i) for i, row in enumerate(rows) for _ in range(group_size)]
    sampler = BatchedSampler(model, tokenizer, params, max_tokens, len(inputs), generator, environment_tokens)
    clients = [sampler_client_type()(sampler, i) for i in range(len(inputs))]
    sampling_args = {**env.sampling_args, "temperature": params.temperature, "top_p": params.top_p,
                     "max_tokens": params.max_new_tokens}
    name = getattr(model.config, "_name_or_path", "") or "grpokit"
    tic = time.perf_counter()
    states = asyncio.run(_rollouts(env, clients, inputs, group_size, sampling_args, name, sampler))
    stats = VerifiersEpisodeStats(model_turns=[e.model_turns for e in sampler.episodes],
                                  tool_calls=sampler.tool_calls, malformed_calls=sampler.malformed_calls,
                                  environment_seconds=max(time.perf_counter() - tic - sampler.decode_seconds, 0.0),
                                  errors=[_error(state) for state in states])
    truncated = [cut or bool(state.get("is_truncated")) or bool(state.get("timed_out"))
                 for cut, state in zip(sampler.truncated, states)]
    return sampler.episodes, truncated, [float(state["reward"]) for state in states], stats


@cache
def sampler_client_type() -> type:
    """verifiers' chat-completions client for one episode, its requests served by a
    :class:`BatchedSampler` (a class made on first use: verifiers is optional)."""
    vf = verifiers()
    from openai.types.chat import ChatCompletion

    class SamplerClient(vf.OpenAIChatCompletionsClient):
        def __init__(self, sampler: BatchedSampler, episode: int):
            super().__init__(sampler)
            self.episode = episode

        async def get_response(self, prompt, model, sampling_args, tools=None, **kwargs):
            """``vf.Client.get_response`` with the sampler as the server; its own errors (a request it
            refuses, a failed decode) end the run instead of becoming the rollout's model error."""
            messages, _ = await self.to_native_prompt(prompt)
            args = {key: value for key, value in sampling_args.items() if key != "extra_body"}
            body = {"model": model, "messages": messages, "tools": await self.to_native_tools(tools),
                    **args, **(sampling_args.get("extra_body") or {})}
            try:
                completion = ChatCompletion.model_validate(await self.client.complete(self.episode, body))
            except ContextFull as full:
                raise vf.OverlongPromptError(str(full)) from full
            await self.raise_from_native_response(completion)
            return await self.from_native_response(completion)

        async def open(self, state) -> None:
            """Start the episode from the rollout's prompt, for a rollout that never asked the model."""
            messages, _ = await self.to_native_prompt(state["prompt"])
            self.client.open(self.episode, messages, await self.to_native_tools(state["tool_defs"] or None))

        async def close(self) -> None:
            """Nothing to close: the sampler runs in this process."""

    return SamplerClient


async def _rollouts(env, clients, inputs: list[dict], group_size: int, sampling_args: dict, model: str,
                    sampler: BatchedSampler) -> list:
    """Every rollout at once, then each group's scoring and cleanup; the rollouts' final states."""
    async def rollout(i: int):
        try:
            return await env.rollout(inputs[i], clients[i], model, copy.deepcopy(sampling_args))
        finally:
            sampler.finished()

    states = await asyncio.gather(*map(rollout, range(len(inputs))), return_exceptions=True)
    failure = next((state for state in states if isinstance(state, BaseException)), None)
    if failure is not None:
        raise failure
    await asyncio.gather(*(_score(env, states[g : g + group_size]) for g in range(0, len(states), group_size)))
    for client, state, episode in zip(clients, states, sampler.episodes):
        if episode is None:
            await client.open(state)
    return states


async def _score(env, states: list) -> None:
    """Score one group and clean up after it, as ``Environment.run_group`` does."""
    if env.score_rollouts:
        await env.rubric.score_group(states)
    else:
        await env.rubric.dummy_score_group(states)
    for state in states:
        await env.rubric.cleanup(state)


def _rollout_input(row, index: int) -> dict:
    if not isinstance(row, dict) or "prompt" not in row:
        found = ", ".join(map(str, row)) if isinstance(row, dict) else type(row).__name__
        raise ConfigError(f"rows[{index}]: expected a row of the environment's dataset (a dict with 'prompt', "
                          f"as env.get_dataset() has them), got {found}")
    return {**row, "example_id": row.get("example_id", index)}


def _error(state) -> str | None:
    error = state.get("error")
    if error is None:
        return None
    return f"{type(error).__name__}: {error or repr(error.__cause__)}"
