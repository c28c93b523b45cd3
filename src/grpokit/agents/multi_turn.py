"""Multi-turn sampling: episodes that alternate model turns and environment turns.

An episode ends when the model's turn asks for nothing (the environment answers None), after
``max_turns`` model turns, or when its tokens after the prompt (sampled and environment ones)
would pass ``max_tokens``; a turn samples at most ``params.max_new_tokens``; a turn cut by the budget, or one without an end-of-turn token, leaves
the episode truncated. The first turn shares each prompt across its G episodes (one prefill per
prompt); later turns decode every live episode of the step together, each on its own context,
and the environment answers all of a round's turns in one call, so tool calls of a step run
concurrently.

An *environment* here is anything with ``respond(turns: list[str], stats: EpisodeStats) ->
list[list[dict] | None]``: for each episode's latest model turn (decoded text), the messages to
append (``{"role": "tool", "content": ...}``) or None to end that episode; it may count what it
did in ``stats``. :class:`ToolEnvironment` is the one behind ``tools=``.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field, replace

import torch

from grpokit.agents.episodes import Episode, EnvironmentTokens
from grpokit.agents.tool_calls import parse_tool_calls
from grpokit.agents.tools import ToolBox
from grpokit.sampling.sampler import SamplingParams, generate


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
    each with one ``tool`` message per call; a malformed call is answered with its error."""

    def __init__(self, toolbox: ToolBox):
        self.toolbox = toolbox

    def respond(self, turns: list[str], stats: EpisodeStats) -> list[list[dict] | None]:
        parsed = [parse_tool_calls(text) for text in turns]
        calls = [call for turn in parsed for call in turn.calls]
        results = iter(self.toolbox.run(calls))
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
                    environment, max_turns: int, max_tokens: int,
                    generator: torch.Generator | None = None) -> tuple[list[Episode], list[bool], EpisodeStats]:
    """``group_size`` episodes per prompt; returns them (prompt order, groups contiguous), whether
    each was truncated, and the step's episode statistics."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    environment_tokens = EnvironmentTokens(tokenizer)
    episodes = [Episode(list(prompt_ids[i // group_size])) for i in range(len(prompt_ids) * group_size)]
    truncated = [False] * len(episodes)
    stats = EpisodeStats()
    turn_limit = replace(params, max_new_tokens=min(params.max_new_tokens, max_tokens))
    first = generate(model, prompt_ids, group_size, turn_limit, eos, pad, generator)
    live = _add_turns(episodes, truncated, range(len(episodes)), first, eos, max_tokens)
    while live:
        tic = time.perf_counter()
        texts = [tokenizer.decode(_last_turn(episodes[i]), skip_special_tokens=True) for i in live]
        replies = environment.respond(texts, stats)
        stats.environment_seconds += time.perf_counter() - tic
        going = []
        for i, messages in zip(live, replies):
            if messages is None or episodes[i].model_turns >= max_turns:
                continue
            ids = environment_tokens(messages)
            if len(episodes[i].ids) + len(ids) >= max_tokens:
                truncated[i] = True
                continue
            episodes[i].add_environment(ids)
            going.append(i)
        if not going:
            break
        budget = max(max_tokens - len(episodes[i].ids) for i in going)
        rollout = generate(model, [episodes[i].context_ids for i in going], 1,
                           replace(params, max_new_tokens=min(params.max_new_tokens, budget)), eos, pad, generator)
        live = _add_turns(episodes, truncated, going, rollout, eos, max_tokens)
    stats.model_turns = [episode.model_turns for episode in episodes]
    return episodes, truncated, stats


def _add_turns(episodes, truncated, rows, rollout, eos: int, max_tokens: int) -> list[int]:
    """Append each row's sampled turn (cut to the episode's budget); return the rows whose turn
    ended with end-of-turn, which the environment answers next."""
    answered = []
    for row, ids, logps in zip(rows, rollout.token_lists(), rollout.sampling_logp.tolist()):
        room = max_tokens - len(episodes[row].ids)
        ids, logps = ids[:room], logps[: min(len(ids), room)]
        episodes[row].add_model_turn(ids, logps)
        if ids and ids[-1] == eos:
            answered.append(row)
        else:
            truncated[row] = True
    return answered


def _last_turn(episode: Episode) -> list[int]:
    """The token ids of the episode's latest model turn."""
    start = len(episode.sampled_mask)
    while start > 0 and episode.sampled_mask[start - 1]:
        start -= 1
    return episode.ids[start:]
