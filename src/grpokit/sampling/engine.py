"""Rollout engines: what samples the policy's completions for a trainer.

An engine takes P prompts (token lists), samples ``group_size`` completions for each and returns
a :class:`~grpokit.sampling.sampler.Rollout`: completion ids (EOS included), the sampler's
log-probs of each token under the tempered distribution, and which completions were cut at
``max_new_tokens``. Rewards, advantages and losses read only that, so they do not care which
engine sampled.

- :class:`NativeEngine` is grpokit's own sampler running on a model (the policy itself, or in
  asynchronous training a copy that receives the policy's weights);
- ``grpokit.sampling.vllm_engine.VLLMColocated`` runs vLLM in the training process;
- ``grpokit.sampling.rollout_client.RolloutServerClient`` asks a ``grpokit serve-rollouts``
  server over HTTP.

Randomness comes from the trainer's generator as a :class:`RandomDraw`: the native engine draws
the global batch's table of uniforms and takes its rows, vLLM draws one seed per completion of
the global batch. Either way a rank's samples depend only on the generator's state and on the
rows it holds, which is what makes resume exact and the samples independent of the number of
processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Protocol

import torch
from transformers import PreTrainedModel

from grpokit.sampling.sampler import Rollout, SamplingParams, generate, left_pad, random_table


@dataclass(frozen=True)
class RandomDraw:
    """The randomness of one rank's share of a global batch: ``global_rows`` completions in all,
    this rank's starting at ``first_row``, drawn from ``generator``."""

    generator: torch.Generator
    global_rows: int
    first_row: int

    def uniforms(self, positions: int, rows: int) -> torch.Tensor:
        """This rank's rows ``(rows, positions)`` of the global batch's table of uniforms."""
        table = random_table(self.global_rows, positions, self.generator)
        return table[self.first_row : self.first_row + rows]

    def seeds(self, rows: int) -> list[int]:
        """One seed per completion of this rank's rows (for engines seeded per request).

        >>> draw = RandomDraw(torch.Generator().manual_seed(0), global_rows=4, first_row=2)
        >>> len(draw.seeds(2)), draw.seeds(2) != draw.seeds(2)  # each call draws anew
        (2, True)
        """
        table = torch.randint(0, 2**31 - 1, (self.global_rows,), generator=self.generator,
                              device=self.generator.device)
        return table[self.first_row : self.first_row + rows].tolist()


class RolloutEngine(Protocol):
    """What a trainer calls to sample; see the module docstring."""

    name: str
    holds_own_weights: bool
    """False when the engine samples with the policy object itself (nothing to load)."""
    wants_merged_weights: bool
    """True: :meth:`load_weights` takes the base model's weights with LoRA adapters merged in
    (an inference engine); False: the policy's own parameters, adapters included."""

    def sample(self, prompt_ids: list[list[int]], group_size: int, params: SamplingParams,
               draw: RandomDraw) -> Rollout:
        """``group_size`` completions for each prompt."""

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Replace the engine's weights with the policy's after ``version`` optimizer steps
        (the base model's names and weights when :attr:`wants_merged_weights`)."""

    def close(self) -> None:
        """Release what the engine holds (processes, memory); safe to call twice."""


class NativeEngine:
    """grpokit's sampler (``grpokit.sampling.sampler.generate``) on ``model``.

    ``autocast`` is the context forward passes run under (bf16); ``keep_decoding`` makes
    processes whose models take part in collectives (FSDP2) decode in lockstep. With
    ``holds_own_weights`` the model is the engine's own copy and :meth:`load_weights` fills it.
    """

    name = "native"
    wants_merged_weights = False

    def __init__(self, model: PreTrainedModel, eos_token_id: int, pad_token_id: int,
                 autocast: Callable[[], AbstractContextManager] = nullcontext, keep_decoding=None,
                 holds_own_weights: bool = False):
        self.model, self.eos_token_id, self.pad_token_id = model, eos_token_id, pad_token_id
        self.autocast, self.keep_decoding = autocast, keep_decoding
        self.holds_own_weights = holds_own_weights

    def sample(self, prompt_ids, group_size, params, draw) -> Rollout:
        uniforms = draw.uniforms(params.max_new_tokens, len(prompt_ids) * group_size)
        with self.autocast():
            return generate(self.model, prompt_ids, group_size, params, self.eos_token_id, self.pad_token_id,
                            uniforms=uniforms, keep_decoding=self.keep_decoding)

    @torch.no_grad()
    def load_weights(self, weights, version: int) -> None:
        own = dict(self.model.named_parameters())
        for name, tensor in weights:
            own[name].copy_(tensor)

    def close(self) -> None:
        pass


def rollout_from_samples(prompt_ids: list[list[int]], group_size: int, completions: list[list[int]],
                         logprobs: list[list[float]], truncated: list[bool], pad_token_id: int) -> Rollout:
    """A :class:`Rollout` of an engine's per-completion token lists (completion ``i`` belongs to
    prompt ``i // group_size``): prompts left-padded, completions and log-probs right-padded.

    >>> r = rollout_from_samples([[5, 6]], 2, [[7, 1], [8]], [[-0.5, -0.1], [-2.0]], [False, True], pad_token_id=0)
    >>> r.completion_ids.tolist(), r.completion_mask.tolist(), r.truncated.tolist()
    ([[7, 1], [8, 0]], [[1, 1], [1, 0]], [False, True])
    """
    width = max(1, max(len(c) for c in completions))
    ids = torch.full((len(completions), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(completions), width), dtype=torch.long)
    logp = torch.zeros((len(completions), width))
    for row, (tokens, values) in enumerate(zip(completions, logprobs, strict=True)):
        ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[row, : len(tokens)] = 1
        logp[row, : len(values)] = torch.tensor(values, dtype=torch.float32)
    prompts, prompt_mask = left_pad(prompt_ids, pad_token_id)
    return Rollout(prompts, prompt_mask, ids, mask, logp, torch.tensor(truncated, dtype=torch.bool), group_size)
