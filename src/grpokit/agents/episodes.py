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

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

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
