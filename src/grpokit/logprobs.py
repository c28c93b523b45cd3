"""Per-token log-probs (and entropy) of completion tokens under a model.

Only completion positions go through the LM head, and they go through it in chunks of
``HEAD_CHUNK_TOKENS`` rows, each chunk recomputed in backward (activation checkpointing), so no
``(N, T, V)`` float32 tensor is ever held: with a 32k vocabulary that tensor would be the
largest thing in memory.

Two ways to run the body of the model:

- ``completion_logprobs`` — every completion row carries its (left-padded) prompt:
  ``G·(P + C)`` tokens for a group;
- ``shared_prefix_logprobs`` — the prompt of each group runs once (with gradients), its KV
  cache is repeated for the G completions, which attend to it: ``P + G·C`` tokens.

Both give the same numbers (a test checks it); the second is the trainer's default.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint
from transformers import DynamicCache, PreTrainedModel

HEAD_CHUNK_TOKENS = 1024


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                   with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-prob of each target under ``softmax(logits / temperature)``, and optionally entropy.

    >>> logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25]]]))
    >>> logp, ent = token_logprobs(logits, torch.tensor([[1]]), with_entropy=True)
    >>> round(logp.exp().item(), 4), round(ent.item(), 4)  # p = 0.25; H = 1.5 ln 2
    (0.25, 1.0397)
    """
    logp_all = (logits.float() / temperature).log_softmax(-1)  # (B, T, V)
    logp = logp_all.gather(-1, targets[..., None]).squeeze(-1)  # (B, T)
    entropy = None
    if with_entropy:
        entropy = -(logp_all.exp() * logp_all).sum(-1)  # (B, T)
    return logp, entropy


def _head_chunk(head, hidden, targets, temperature):
    logp, entropy = token_logprobs(head(hidden), targets, temperature, with_entropy=True)
    return logp, entropy


def head_logprobs(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                  temperature: float = 1.0, with_entropy: bool = True
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs and entropies ``(B, T)`` of ``targets`` from final hidden states ``(B, T, H)``.

    The LM head runs on ``HEAD_CHUNK_TOKENS`` positions at a time; with gradients on, each
    chunk is checkpointed so its logits are freed after forward and rebuilt in backward.
    """
    flat_hidden, flat_targets = hidden.flatten(0, 1), targets.flatten()  # (B·T, H), (B·T,)
    logps, entropies = [], []
    for start in range(0, flat_targets.shape[0], HEAD_CHUNK_TOKENS):
        chunk = slice(start, start + HEAD_CHUNK_TOKENS)
        if torch.is_grad_enabled():
            logp, entropy = checkpoint(_head_chunk, head, flat_hidden[chunk], flat_targets[chunk],
                                       temperature, use_reentrant=False)
        else:
            logp, entropy = _head_chunk(head, flat_hidden[chunk], flat_targets[chunk], temperature)
        logps.append(logp)
        entropies.append(entropy)
    shape = targets.shape
    return torch.cat(logps).view(shape), torch.cat(entropies).view(shape) if with_entropy else None


def completion_logprobs(
    model: PreTrainedModel,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs and entropies ``(B, Tc)`` of completion tokens, one prompt row per completion.

    Prompts are left-padded and completions right-padded, so completion positions are the last
    ``Tc`` of ``[prompt | completion]``; the token at completion position j is predicted by the
    hidden state one position earlier.
    """
    input_ids = torch.cat([prompt_ids, completion_ids], 1)  # (B, Tp + Tc)
    attention_mask = torch.cat([prompt_mask, completion_mask], 1)  # (B, Tp + Tc)
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)  # (B, Tp + Tc)
    hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                 position_ids=position_ids, use_cache=False).last_hidden_state
    width = completion_ids.shape[1]
    predicting = hidden[:, -width - 1 : -1]  # (B, Tc, H)
    return head_logprobs(model.get_output_embeddings(), predicting, completion_ids, temperature,
                         with_entropy)


def shared_prefix_logprobs(
    model: PreTrainedModel,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Like :func:`completion_logprobs`, but each of the P prompts runs once for its group.

    ``prompt_ids`` is ``(P, Tp)``; ``completion_ids`` is ``(P·G, Tc)`` with row i belonging to
    prompt ``i // G``. The prompt's KV cache (with its autograd graph) is repeated G times, so
    gradients from all G completions flow back into one prompt forward.
    """
    group_size = completion_ids.shape[0] // prompt_ids.shape[0]
    body, cache = model.get_decoder(), DynamicCache()
    prompt_hidden = body(input_ids=prompt_ids, attention_mask=prompt_mask,
                         position_ids=(prompt_mask.cumsum(1) - 1).clamp(min=0),
                         cache=cache, use_cache=True).last_hidden_state[:, -1:]  # (P, 1, H)
    hidden = prompt_hidden.repeat_interleave(group_size, 0)  # (N, 1, H)
    width = completion_ids.shape[1]
    if width > 1:
        cache.batch_repeat_interleave(group_size)
        mask = torch.cat([prompt_mask.repeat_interleave(group_size, 0), completion_mask], 1)
        start = prompt_mask.sum(1).repeat_interleave(group_size)[:, None]  # (N, 1)
        positions = start + torch.arange(width - 1, device=start.device)  # (N, Tc - 1)
        completion_hidden = body(input_ids=completion_ids[:, :-1], attention_mask=mask[:, :-1],
                                 position_ids=positions, cache=cache,
                                 use_cache=True).last_hidden_state  # (N, Tc - 1, H)
        hidden = torch.cat([hidden, completion_hidden], 1)  # (N, Tc, H)
    return head_logprobs(model.get_output_embeddings(), hidden, completion_ids, temperature,
                         with_entropy)
