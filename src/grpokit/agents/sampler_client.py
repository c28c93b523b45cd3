"""An in-process chat-completions endpoint served by grpokit's sampler, for environments that
talk to the model in chat messages (verifiers'), that keeps every episode's tokens as sampled.

Each episode (an index the caller gives) is one growing token sequence. Its first request is
rendered with the chat template and the request's tool schemas, as ``encode_prompt`` renders a
prompt. Every later request must be the previous one, the reply it got and new environment
messages (``user``, ``tool`` or ``system``): their tokens as the template renders them after a
finished assistant turn (:class:`EnvironmentTokens`) are appended, masked, and the next turn is
sampled from the exact context ids, so the conversation is never re-tokenized. A request that
changes earlier messages or the tools is refused with a :class:`ConfigError`, and so is one
asking for sampling other than the sampler's :class:`SamplingParams`.

Requests of concurrent episodes are decoded together: when every live episode is waiting on the
model (or when nothing has moved for :data:`STALL_SECONDS`, so an episode that waits on another
cannot hang them all), one ``generate`` call decodes the waiting ones in episode order; equal
consecutive contexts in runs of the same length (the G first requests of a row) share one
prefill.

The reply is a chat completion as vLLM returns it with ``return_token_ids`` and ``logprobs``:
the text; when the request has tools, its Hermes ``<tool_call>`` blocks as ``tool_calls`` (read
as vLLM's hermes parser reads them: content is the text before the first block, and a malformed
block leaves the whole text as content and no calls); ``finish_reason`` ``stop``,
``tool_calls`` or ``length`` (no end-of-turn token); the context's and the turn's token ids and
the turn's log-probs. An episode whose budget is spent (``max_tokens`` sampled and environment
tokens after its prompt) or whose last turn has no end-of-turn token is truncated, and its next
request raises :class:`ContextFull`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, replace

import torch

from grpokit.agents.episodes import Episode, EnvironmentTokens
from grpokit.agents.tool_calls import OPEN_TAG, ToolCall, parse_tool_calls
from grpokit.data.prompts import encode_prompt
from grpokit.errors import ConfigError
from grpokit.sampling.sampler import SamplingParams, generate

#: Seconds without a new request or an ended episode after which the waiting episodes are
#: decoded although others are still busy (one may be waiting on another, e.g. on a lock).
STALL_SECONDS = 1.0
ENVIRONMENT_ROLES = ("user", "tool", "system")
#: Request keys that ask for nothing the sampler does not do (replies always carry token ids
#: and log-probs).
PASSIVE_KEYS = ("model", "messages", "tools", "max_tokens", "max_completion_tokens", "logprobs",
                "return_token_ids", "return_tokens_as_token_ids")


class ContextFull(Exception):
    """The episode is truncated: its token budget is spent or its last turn was cut."""


@dataclass
class _Request:
    episode: int
    limit: int  # the most tokens this turn may sample
    model: str
    with_tools: bool
    future: asyncio.Future


class BatchedSampler:
    """Serves the chat-completions requests of ``episodes`` concurrent episodes with ``generate``.

    Args:
        model, tokenizer: the policy and its tokenizer (a chat template ending assistant turns with eos).
        params: how every turn is sampled.
        max_tokens: each episode's budget of sampled and environment tokens after its prompt.
        episodes: how many episodes send requests; each calls :meth:`finished` once it sends no more.
        generator, environment_tokens: as for :func:`grpokit.agents.multi_turn.sample_episodes`.
    """

    def __init__(self, model, tokenizer, params: SamplingParams, max_tokens: int, episodes: int,
                 generator: torch.Generator | None = None, environment_tokens: EnvironmentTokens | None = None):
        if max_tokens < 1:
            raise ConfigError(f"max_tokens (each episode's token budget after its prompt) must be >= 1, got {max_tokens}")
        self.model, self.tokenizer, self.params, self.max_tokens = model, tokenizer, params, max_tokens
        self.generator = generator
        self.environment_tokens = environment_tokens or EnvironmentTokens(tokenizer)
        self.episodes: list[Episode | None] = [None] * episodes
        self.truncated = [False] * episodes
        self.tool_calls = self.malformed_calls = 0
        self.decode_seconds = 0.0
        self._sent: list[list[dict]] = [[] for _ in range(episodes)]  # each conversation so far, replies included
        self._tools: list[list[dict] | None] = [None] * episodes
        self._waiting: list[_Request] = []
        self._live = episodes
        self._stall: asyncio.TimerHandle | None = None

    def open(self, episode: int, messages: list[dict], tools: list[dict] | None) -> None:
        """Start ``episode`` with its prompt: ``messages`` rendered with the chat template and ``tools``."""
        messages = [_present(m) for m in messages]
        self.episodes[episode] = Episode(encode_prompt(messages, self.tokenizer, f"verifiers episode {episode}", tools))
        self._sent[episode], self._tools[episode] = messages, tools

    async def complete(self, episode: int, body: dict) -> dict:
        """The chat completion (a dict) answering ``body``: ``model``, ``messages``, optionally
        ``tools`` and sampling keys, as a chat-completions request has them."""
        body = _present(body)
        limit = self._turn_limit(body)
        messages, tools = [_present(m) for m in body["messages"]], body.get("tools")
        if self.episodes[episode] is None:
            self.open(episode, messages, tools)
        else:
            self._extend(episode, messages, tools)
        room = self.max_tokens - len(self.episodes[episode].ids)
        request = _Request(episode, min(limit, room), body["model"], bool(tools),
                           asyncio.get_running_loop().create_future())
        self._waiting.append(request)
        self._progress()
        return await request.future

    def finished(self) -> None:
        """One episode sends no more requests."""
        self._live -= 1
        self._progress()

    def _turn_limit(self, body: dict) -> int:
        """The most tokens the request lets its turn sample; a ConfigError if it asks for other sampling."""
        sampled = {"n": 1, "temperature": self.params.temperature, "top_p": self.params.top_p, "top_k": self.params.top_k}
        for key, value in body.items():
            if key in PASSIVE_KEYS:
                continue
            if key not in sampled or (max(value, 0) if key == "top_k" else value) != sampled[key]:
                raise ConfigError(
                    f"the environment's request asks for {key}={value!r}, which grpokit's sampler does not do: it "
                    f"samples one choice per request with temperature={self.params.temperature}, "
                    f"top_p={self.params.top_p}, top_k={self.params.top_k} and ends a turn at the tokenizer's eos "
                    f"token only; a request may set {', '.join(PASSIVE_KEYS[3:])} and those sampling values")
        limit = body.get("max_completion_tokens", body.get("max_tokens", self.params.max_new_tokens))
        if not isinstance(limit, int) or limit < 1:
            raise ConfigError(f"the environment's request asks for max_tokens={limit!r}; expected an int >= 1")
        return min(limit, self.params.max_new_tokens)

    def _extend(self, episode: int, messages: list[dict], tools: list[dict] | None) -> None:
        """Append the environment messages that follow the last reply, as tokens."""
        sent = self._sent[episode]
        if messages[: len(sent)] != sent or tools != self._tools[episode]:
            raise ConfigError(
                f"verifiers episode {episode}: a request does not continue the conversation the sampler served "
                f"(an earlier message, the model's reply or the tools changed); grpokit trains on the sampled "
                f"tokens of one growing sequence per episode, so an environment may only append messages")
        if self.truncated[episode]:
            raise ContextFull(f"episode {episode}: its last turn has no end-of-turn token (cut at "
                              f"{self.params.max_new_tokens} tokens or by its budget), so no message can follow it")
        new = messages[len(sent) :]
        for message in new:
            if message.get("role") not in ENVIRONMENT_ROLES or not isinstance(message.get("content"), str):
                raise ConfigError(f"verifiers episode {episode}: the environment answered with {message!r}; "
                                  f"expected messages with a role of {', '.join(ENVIRONMENT_ROLES)} and text content")
        names = {call["id"]: call["function"]["name"] for call in sent[-1].get("tool_calls", [])}
        rendered = [{"role": m["role"], "content": m["content"],
                     **({"name": names[m["tool_call_id"]]} if m.get("tool_call_id") in names else {})} for m in new]
        ids = self.environment_tokens(rendered)
        record = self.episodes[episode]
        if len(record.ids) + len(ids) >= self.max_tokens:
            self.truncated[episode] = True
            raise ContextFull(f"episode {episode}: the environment's messages leave no room in its budget of "
                              f"{self.max_tokens} tokens after the prompt")
        record.add_environment(ids)
        record.messages += rendered
        self._sent[episode] = messages

    def _progress(self) -> None:
        """Decode now if every live episode is waiting on the model, else once nothing moves for a while."""
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        self._waiting = [r for r in self._waiting if not r.future.done()]  # a timed-out rollout cancels its wait
        if self._waiting and len(self._waiting) >= self._live:
            self._decode()
        elif self._waiting:
            self._stall = asyncio.get_running_loop().call_later(STALL_SECONDS, self._decode)

    def _decode(self) -> None:
        requests = sorted((r for r in self._waiting if not r.future.done()), key=lambda r: r.episode)
        self._waiting, self._stall = [], None
        if not requests:
            return
        try:
            replies = self._sample(requests)
        except Exception as error:  # every waiting episode gets the sampler's error
            for request in requests:
                request.future.set_exception(error)
            return
        for request, reply in zip(requests, replies):
            request.future.set_result(reply)

    def _sample(self, requests: list[_Request]) -> list[dict]:
        tic = time.perf_counter()
        contexts = [self.episodes[r.episode].context_ids for r in requests]
        group = shared_prefill(contexts)
        params = replace(self.params, max_new_tokens=max(r.limit for r in requests))
        rollout = generate(self.model, contexts[::group], group, params, self.tokenizer.eos_token_id,
                           self.tokenizer.pad_token_id, self.generator)
        self.decode_seconds += time.perf_counter() - tic
        return [self._reply(request, context, ids[: request.limit], logps)
                for request, context, ids, logps in zip(requests, contexts, rollout.token_lists(),
                                                        rollout.sampling_logp.tolist())]

    def _reply(self, request: _Request, context: list[int], ids: list[int], logps: list[float]) -> dict:
        """Record the sampled turn in its episode and answer it as a chat completion."""
        logps = logps[: len(ids)]
        episode = self.episodes[request.episode]
        episode.add_model_turn(ids, logps)
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        episode.messages.append({"role": "assistant", "content": text})
        ended = bool(ids) and ids[-1] == self.tokenizer.eos_token_id
        self.truncated[request.episode] |= not ended
        content, calls, malformed = hermes_tool_calls(text) if request.with_tools else (text, [], 0)
        self.tool_calls, self.malformed_calls = self.tool_calls + len(calls), self.malformed_calls + malformed
        wire_calls = [{"id": f"call_{request.episode}_{episode.model_turns}_{k}", "type": "function",
                       "function": {"name": call.name, "arguments": json.dumps(call.arguments)}}
                      for k, call in enumerate(calls)]
        # the reply as the environment sends it back: no empty content, no empty list of calls
        self._sent[request.episode].append(_present({"role": "assistant", "content": content or None,
                                                     "tool_calls": wire_calls or None}))
        message = {"role": "assistant", "content": content, **({"tool_calls": wire_calls} if wire_calls else {})}
        tokens = self.tokenizer.convert_ids_to_tokens(ids)
        return {"id": f"grpokit-{request.episode}-{episode.model_turns}", "object": "chat.completion",
                "created": int(time.time()), "model": request.model, "prompt_token_ids": context,
                "choices": [{"index": 0, "message": message, "token_ids": ids,
                             "finish_reason": "length" if not ended else "tool_calls" if calls else "stop",
                             "logprobs": {"content": [{"token": token, "logprob": logp, "bytes": None, "top_logprobs": []}
                                                      for token, logp in zip(tokens, logps)]}}],
                "usage": {"prompt_tokens": len(context), "completion_tokens": len(ids),
                          "total_tokens": len(context) + len(ids)}}


def hermes_tool_calls(text: str) -> tuple[str | None, list[ToolCall], int]:
    """A turn's content, tool calls and number of malformed calls, as vLLM's hermes parser reads
    them: the text before the first ``<tool_call>`` and the calls, or, when a block is
    malformed, the whole text and no calls.

    >>> hermes_tool_calls('Sure. <tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>')
    ('Sure. ', [ToolCall(name='add', arguments={'a': 1})], 0)
    >>> hermes_tool_calls('<tool_call>{"name": add}</tool_call>')
    ('<tool_call>{"name": add}</tool_call>', [], 1)
    """
    if OPEN_TAG not in text:
        return text, [], 0
    turn = parse_tool_calls(text)
    if turn.errors:
        return text, [], len(turn.errors)
    return text[: text.index(OPEN_TAG)] or None, turn.calls, 0


def shared_prefill(contexts: list[list[int]]) -> int:
    """G when the contexts are runs of G equal ones (each run is prefilled once), else 1.

    >>> shared_prefill([[1, 2], [1, 2], [3], [3]]), shared_prefill([[1], [1], [2]]), shared_prefill([[1], [2]])
    (2, 1, 1)
    """
    runs = {len(list(run)) for _, run in itertools.groupby(contexts)}
    return runs.pop() if len(runs) == 1 else 1


def _present(mapping) -> dict:
    """``mapping`` without its None values (a request's unset fields)."""
    return {key: value for key, value in dict(mapping).items() if value is not None}
