"""Multi-turn sampling: episodes that alternate model turns and environment turns.

An episode ends when the model's turn asks for nothing (the environment answers None), after
``max_turns`` model turns, or when its tokens after the prompt (sampled and environment ones)
would pass ``max_tokens``; a turn samples at most ``params.max_new_tokens``; a turn cut by the
budget, or one without an end-of-turn token, leaves the episode truncated. The first turn shares
each prompt across its G episodes (one prefill per prompt) when they are the same; later turns
decode every live episode of the step together, each continuing from its own KV cache (only the
environment's tokens are encoded: the conversation so far is never encoded again), and the
environment answers all of a round's turns in one call, so tool calls of a step run concurrently.

An *environment* here is anything with ``respond(episodes: list[int], turns: list[str], stats:
EpisodeStats) -> list[list[dict] | None]``: for each listed episode (its index in the step) and
its latest model turn (decoded text), the messages to append (``{"role": "tool", "content":
...}``) or None to end that episode; it may count what it did in ``stats``.
:class:`ToolEnvironment` is the one behind ``tools=`` and ``environment_factory=``.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field, replace

import torch

from grpokit.agents.episodes import Episode, EnvironmentTokens, rollout_from_lists
from grpokit.agents.tool_calls import parse_tool_calls
from grpokit.agents.tools import ERROR_KINDS, ToolBox, run_tool_calls
from grpokit.sampling.sampler import Rollout, RowCache, SamplingParams, continue_generation, generate


@dataclass
class EpisodeStats:
    """What a step's episodes did, for its metrics."""

    model_turns: list[int] = field(default_factory=list)
    tool_calls: int = 0
    malformed_calls: int = 0
    tool_errors: Counter = field(default_factory=Counter)  # by ToolResult.error kind
    environment_seconds: float = 0.0


class ToolEnvironment:
    """Runs the tool calls of every model turn (all episodes' at once, concurrently) and answers
    each with one ``tool`` message per call; a malformed call is answered with its error.

    ``toolbox`` holds the tools every episode has (and the schemas the prompts show);
    ``episode_toolboxes``, when given, one box per episode of the step (an environment
    instance's methods with the shared tools, ``environment_factory=``)."""

    def __init__(self, toolbox: ToolBox, episode_toolboxes: list[ToolBox] | None = None):
        self.toolbox, self.episode_toolboxes = toolbox, episode_toolboxes

    def for_episodes(self, toolboxes: list[ToolBox]) -> "ToolEnvironment":
        return ToolEnvironment(self.toolbox, toolboxes)

    def respond(self, episodes: list[int], turns: list[str], stats: EpisodeStats) -> list[list[dict] | None]:
        parsed = [parse_tool_calls(text) for text in turns]
        boxes = [self.episode_toolboxes[e] if self.episode_toolboxes else self.toolbox for e in episodes]
        calls = [(box, call) for box, turn in zip(boxes, parsed) for call in turn.calls]
        results = iter(run_tool_calls(calls))
        stats.tool_calls += len(calls)
        replies = []
        for turn in parsed:
            if not turn.wants_tools:
                replies.append(None)
                continue
            stats.malformed_calls += len(turn.errors)
            messages = [{"role": "tool", "content": f"error: {error}"} for error in turn.errors]
            for call in turn.calls:
                result = next(results)
                if result.error:
                    stats.tool_errors[result.error] += 1
                messages.append({"role": "tool", "name": call.name, "content": result.content})
            replies.append(messages)
        return replies


def sample_episodes(model, tokenizer, prompt_ids: list[list[int]], group_size: int, params: SamplingParams,
                    environment, max_turns: int, max_tokens: int, generator: torch.Generator | None = None,
                    environment_tokens: EnvironmentTokens | None = None,
                    ) -> tuple[list[Episode], list[bool], EpisodeStats]:
    """One episode per prompt in ``prompt_ids`` (G consecutive ones per group, usually the same
    prompt); returns them in that order, whether each was truncated, and the step's episode
    statistics. Pass ``environment_tokens`` to keep its cache of rendered environment messages
    across calls."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    environment_tokens = environment_tokens or EnvironmentTokens(tokenizer)
    episodes = [Episode(list(ids)) for ids in prompt_ids]
    truncated = [False] * len(episodes)
    stats = EpisodeStats()
    turn_limit = replace(params, max_new_tokens=min(params.max_new_tokens, max_tokens))
    groups = [prompt_ids[i : i + group_size] for i in range(0, len(prompt_ids), group_size)]
    caches: dict[int, RowCache] = {}  # each live episode's KV cache, by episode
    if all(ids == group[0] for group in groups for ids in group):  # each prompt prefilled once
        first = generate(model, [group[0] for group in groups], group_size, turn_limit, eos, pad, generator,
                         row_caches=caches)
    else:
        first = generate(model, prompt_ids, 1, turn_limit, eos, pad, generator, row_caches=caches)
    live = _add_turns(episodes, truncated, range(len(episodes)), first, eos, max_tokens, tokenizer)
    while live:
        tic = time.perf_counter()
        texts = [episodes[i].messages[-1]["content"] for i in live]
        replies = environment.respond(live, texts, stats)
        stats.environment_seconds += time.perf_counter() - tic
        going, new_ids = [], []
        for i, messages in zip(live, replies):
            if messages is None or episodes[i].model_turns >= max_turns:
                continue
            ids = environment_tokens(messages)
            if len(episodes[i].ids) + len(ids) >= max_tokens:
                truncated[i] = True
                continue
            new_ids.append([episodes[i].ids[-1], *ids])  # the turn's end-of-turn token is not in its cache yet
            episodes[i].add_environment(ids)
            episodes[i].messages += messages
            going.append(i)
        if not going:
            break
        budget = max(max_tokens - len(episodes[i].ids) for i in going)
        turn_caches: dict[int, RowCache] = {}
        rollout = continue_generation(model, [caches.pop(i) for i in going], new_ids,
                                      replace(params, max_new_tokens=min(params.max_new_tokens, budget)), eos, pad,
                                      generator, row_caches=turn_caches)
        caches = {going[row]: cache for row, cache in turn_caches.items()}
        live = _add_turns(episodes, truncated, going, rollout, eos, max_tokens, tokenizer)
    stats.model_turns = [episode.model_turns for episode in episodes]
    return episodes, truncated, stats


def episodes_to_rollout(episodes: list[Episode], truncated: list[bool], group_size: int, pad_id: int) -> Rollout:
    """The episodes as one :class:`Rollout` (see :func:`grpokit.agents.episodes.rollout_from_lists`),
    ``sampled_mask`` marking the trained tokens and each episode's messages as its conversation."""
    return rollout_from_lists([e.prompt_ids for e in episodes], [e.ids for e in episodes],
                              [e.sampling_logp for e in episodes], [e.sampled_mask for e in episodes],
                              truncated, group_size, pad_id, conversations=[e.messages for e in episodes])


def _add_turns(episodes, truncated, rows, rollout, eos: int, max_tokens: int, tokenizer) -> list[int]:
    """Append each row's sampled turn (cut to the episode's budget); return the rows whose turn
    ended with end-of-turn, which the environment answers next."""
    answered = []
    for row, ids, logps in zip(rows, rollout.token_lists(), rollout.sampling_logp.tolist()):
        room = max_tokens - len(episodes[row].ids)
        ids = ids[:room]
        logps = logps[: len(ids)]
        episodes[row].add_model_turn(ids, logps)
        episodes[row].messages.append({"role": "assistant",
                                       "content": tokenizer.decode(ids, skip_special_tokens=True)})
        if ids and ids[-1] == eos:
            answered.append(row)
        else:
            truncated[row] = True
    return answered


def episode_metrics(stats: EpisodeStats | None, rollout: Rollout) -> dict[str, float]:
    """The step's ``agent/*`` metrics (none without episodes): turns per episode, tool calls, tool
    errors by kind, malformed calls, and model and environment tokens per episode."""
    if stats is None or rollout.sampled_mask is None:
        return {}
    turns = torch.tensor(stats.model_turns, dtype=torch.float)
    sampled = rollout.sampled_mask.sum(1).float()
    return {"agent/turns_mean": float(turns.mean()), "agent/turns_max": float(turns.max()),
            "agent/tool_calls": float(stats.tool_calls), "agent/malformed_calls": float(stats.malformed_calls),
            **{f"agent/tool_errors/{kind}": float(stats.tool_errors[kind]) for kind in ERROR_KINDS},
            "agent/model_tokens_mean": float(sampled.mean()),
            "agent/environment_tokens_mean": float((rollout.completion_mask.sum(1).float() - sampled).mean())}
