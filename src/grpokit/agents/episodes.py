"""A multi-turn episode as the token sequence the policy is trained on, built turn by turn and
never re-tokenized from text.

After the prompt, an episode alternates the tokens the policy sampled (a turn ends with the
tokenizer's end-of-turn token) and the tokens of the environment's messages (tool results, user
replies) followed by the next assistant header. The environment's tokens are what the chat
template renders for those messages after a finished assistant turn, found as the difference
between two renderings of a fixed stand-in conversation, with and without the messages (so a
template that is not append-only, such as SmolLM2's, which adds a default system prompt, gives
the right suffix). Sampled tokens are kept exactly as sampled: re-encoding the decoded
conversation can merge or split tokens at turn boundaries, and then the trained tokens would not
be the sampled ones.

Only sampled tokens count in the loss and the KL (``sampled_mask``); environment tokens are
context.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch

from grpokit.sampling.sampler import Rollout, left_pad

_STAND_IN = ({"role": "user", "content": "stand-in"}, {"role": "assistant", "content": "stand-in"})


@dataclass
class Episode:
    """One episode after its prompt: ``ids`` (sampled and environment tokens, in order),
    ``sampled_mask`` (1 where the policy sampled the token), ``sampling_logp`` (the sampler's
    log-prob at sampled tokens, 0 elsewhere) and its turn count."""

    prompt_ids: list[int]
    ids: list[int] = field(default_factory=list)
    sampled_mask: list[int] = field(default_factory=list)
    sampling_logp: list[float] = field(default_factory=list)
    model_turns: int = 0
    messages: list[dict] = field(default_factory=list)  # the turns as chat messages, for rewards and logs

    def add_model_turn(self, ids: list[int], logps: list[float]) -> None:
        if len(ids) != len(logps):
            raise ValueError(f"add_model_turn: {len(ids)} tokens but {len(logps)} log-probs")
        self.ids += ids
        self.sampled_mask += [1] * len(ids)
        self.sampling_logp += logps
        self.model_turns += 1

    def add_environment(self, ids: list[int]) -> None:
        self.ids += ids
        self.sampled_mask += [0] * len(ids)
        self.sampling_logp += [0.0] * len(ids)

    @property
    def context_ids(self) -> list[int]:
        """Everything the policy conditions its next turn on: the prompt and the episode so far."""
        return self.prompt_ids + self.ids

    def tokens_by_role(self) -> dict[str, int]:
        sampled = sum(self.sampled_mask)
        return {"prompt": len(self.prompt_ids), "model": sampled, "environment": len(self.ids) - sampled}


class EnvironmentTokens:
    """The token ids of environment messages as the tokenizer's chat template renders them after
    an assistant turn, followed by the next assistant header.

    Args:
        tokenizer: a tokenizer with a chat template and an ``eos_token_id`` that ends turns.
        template_kwargs: extra keyword arguments for ``apply_chat_template`` (e.g. ``tools``).
    """

    def __init__(self, tokenizer: Any, **template_kwargs: Any):
        self.tokenizer, self.template_kwargs = tokenizer, template_kwargs
        self._stand_in_ids = self._render(list(_STAND_IN), add_generation_prompt=False)
        ends = [i for i, token in enumerate(self._stand_in_ids) if token == tokenizer.eos_token_id]
        if not ends:
            raise ValueError("the chat template does not end an assistant turn with the tokenizer's "
                             f"eos token {tokenizer.eos_token!r}; multi-turn episodes need one to cut turns")
        self._prefix = self._stand_in_ids[: ends[-1] + 1]  # up to the end of the assistant turn
        self.suffix = lru_cache(maxsize=4096)(self._suffix)

    def __call__(self, messages: list[dict]) -> list[int]:
        """``messages`` (``{"role": "tool" | "user", "content": ...}``) as token ids."""
        key = tuple((m["role"], m["content"], m.get("name")) for m in messages)
        return list(self.suffix(key))

    def _suffix(self, key: tuple) -> tuple[int, ...]:
        messages = [{"role": role, "content": content, **({"name": name} if name else {})}
                    for role, content, name in key]
        full = self._render(list(_STAND_IN) + messages, add_generation_prompt=True)
        if full[: len(self._prefix)] != self._prefix:
            raise ValueError("the chat template renders an assistant turn differently once messages follow it; "
                             "its environment tokens cannot be cut from a rendering")
        return tuple(full[len(self._prefix) :])

    def _render(self, messages: list[dict], add_generation_prompt: bool) -> list[int]:
        rendered = self.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt,
                                                      return_dict=False, **self.template_kwargs)
        return list(rendered)


def rollout_from_lists(prompt_ids: list[list[int]], completion_ids: list[list[int]], logprobs: list[list[float]],
                       sampled_masks: list[list[int]] | None, truncated: list[bool], group_size: int, pad_id: int,
                       conversations: list[list[dict]] | None = None) -> Rollout:
    """Per-completion token lists (G consecutive completions per group) as one :class:`Rollout`.

    Each group's prompt is the longest prefix its completions' prompts share; whatever an
    episode's prompt has beyond it goes in front of its completion as context (masked out of the
    loss), so groups whose prompts differ a little (an environment's ``reset`` text) still share
    their common prefix in the training forward. ``sampled_masks`` (1 on trained tokens) may be
    None when every completion token was sampled.

    >>> r = rollout_from_lists([[1, 2, 3], [1, 2, 4]], [[7, 0], [8]], [[-.5, -.1], [-.2]], None,
    ...                        [False, True], group_size=2, pad_id=0)
    >>> r.prompt_ids.tolist(), r.completion_ids.tolist(), r.sampled_mask.tolist()
    ([[1, 2]], [[3, 7, 0], [4, 8, 0]], [[0, 1, 1], [0, 1, 0]])
    """
    rows = range(len(completion_ids))
    masks = sampled_masks or [[1] * len(ids) for ids in completion_ids]
    shared = [os.path.commonprefix(prompt_ids[g : g + group_size]) for g in range(0, len(prompt_ids), group_size)]
    extra = [prompt_ids[i][len(shared[i // group_size]) :] for i in rows]
    ids = [extra[i] + list(completion_ids[i]) for i in rows]
    width = max(max(len(row) for row in ids), 1)
    pad = lambda values, fill: list(values) + [fill] * (width - len(values))  # noqa: E731
    sampled = [pad([0] * len(extra[i]) + list(masks[i]), 0) for i in rows]
    whole = sampled_masks is None and not any(extra)
    padded_prompts, prompt_mask = left_pad(shared, pad_id)
    return Rollout(padded_prompts, prompt_mask, torch.tensor([pad(row, pad_id) for row in ids]),
                   torch.tensor([pad([1] * len(row), 0) for row in ids]),
                   torch.tensor([pad([0.0] * len(extra[i]) + list(logprobs[i]), 0.0) for i in rows], dtype=torch.float),
                   torch.tensor(truncated, dtype=torch.bool), group_size,
                   sampled_mask=None if whole else torch.tensor(sampled), conversations=conversations)
