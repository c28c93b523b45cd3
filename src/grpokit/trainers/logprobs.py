"""Per-token log-probs (and entropy) of completion tokens under a model.

Only completion positions go through the LM head, and they go through it in chunks of
``HEAD_CHUNK_TOKENS`` rows whose logits are rebuilt in backward, so no ``(N, T, V)`` float32
tensor is ever held: with a 32k vocabulary that tensor would be the largest thing in memory.

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

from grpokit.models.transformers_compat import with_cache

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


class _LinearLogprob(torch.autograd.Function):
    """Log-prob of ``targets`` under ``softmax(hidden @ weight.T / temperature)``, plus entropy.

    Forward keeps no logits: backward recomputes them for its chunk and forms the gradient of
    the log-prob directly, ``d logp / d logits = (onehot(target) - softmax) / temperature``.
    The entropy is a metric and carries no gradient.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature):
        with torch.no_grad(), torch.autocast(hidden.device.type, enabled=False):
            logits = hidden.to(weight.dtype) @ weight.T  # (n, V), in the head's own precision
            logp_all = logits.float().div_(temperature).log_softmax(-1)  # (n, V)
            logp = logp_all.gather(-1, targets[:, None]).squeeze(1)  # (n,)
            entropy = -(logp_all.exp() * logp_all).sum(-1)  # (n,)
        ctx.save_for_backward(hidden, weight, targets)
        ctx.temperature = temperature
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, _grad_entropy):
        hidden, weight, targets = ctx.saved_tensors
        hidden_w = hidden.to(weight.dtype)
        probs = (hidden_w @ weight.T).float().div_(ctx.temperature).softmax(-1)  # (n, V)
        grad_logits = probs.mul_(-grad_logp[:, None].float())  # (n, V)
        grad_logits[torch.arange(len(targets)), targets] += grad_logp.float()
        grad_logits = grad_logits.div_(ctx.temperature).to(weight.dtype)
        grad_hidden = (grad_logits @ weight).to(hidden.dtype) if ctx.needs_input_grad[0] else None
        grad_weight = grad_logits.T @ hidden_w if ctx.needs_input_grad[1] else None
        return grad_hidden, grad_weight, None, None


def _is_plain_linear(head: torch.nn.Module) -> bool:
    return type(head) is torch.nn.Linear and head.bias is None


def head_logprobs(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                  temperature: float = 1.0, with_entropy: bool = True
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs and entropies ``(B, T)`` of ``targets`` from final hidden states ``(B, T, H)``.

    The LM head runs on ``HEAD_CHUNK_TOKENS`` positions at a time and keeps no logits for
    backward (a plain bias-free ``nn.Linear`` head goes through ``_LinearLogprob``; any other
    head is checkpointed per chunk), so memory stays at one chunk of logits.
    """
    flat_hidden, flat_targets = hidden.flatten(0, 1), targets.flatten()  # (B·T, H), (B·T,)
    logps, entropies = [], []
    for start in range(0, flat_targets.shape[0], HEAD_CHUNK_TOKENS):
        chunk = slice(start, start + HEAD_CHUNK_TOKENS)
        if _is_plain_linear(head):
            logp, entropy = _LinearLogprob.apply(flat_hidden[chunk], head.weight,
                                                 flat_targets[chunk], temperature)
        else:
            logp, entropy = checkpoint(_head_chunk, head, flat_hidden[chunk], flat_targets[chunk],
                                       temperature, use_reentrant=False)
        logps.append(logp)
        entropies.append(entropy.detach())
    shape = targets.shape
    return torch.cat(logps).view(shape), torch.cat(entropies).view(shape) if with_entropy else None


def _head_chunk(head, hidden, targets, temperature):
    return token_logprobs(head(hidden), targets, temperature, with_entropy=True)


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
                         **with_cache(cache)).last_hidden_state[:, -1:]  # (P, 1, H)
    hidden = prompt_hidden.repeat_interleave(group_size, 0)  # (N, 1, H)
    width = completion_ids.shape[1]
    if width > 1:
        cache.batch_repeat_interleave(group_size)
        mask = torch.cat([prompt_mask.repeat_interleave(group_size, 0), completion_mask], 1)
        start = prompt_mask.sum(1).repeat_interleave(group_size)[:, None]  # (N, 1)
        positions = start + torch.arange(width - 1, device=start.device)  # (N, Tc - 1)
        completion_hidden = body(input_ids=completion_ids[:, :-1], attention_mask=mask[:, :-1],
                                 position_ids=positions, **with_cache(cache)).last_hidden_state  # (N, Tc - 1, H)
        hidden = torch.cat([hidden, completion_hidden], 1)  # (N, Tc, H)
    return head_logprobs(model.get_output_embeddings(), hidden, completion_ids, temperature,
                         with_entropy)


def model_logprobs(
    model: PreTrainedModel,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Like :func:`completion_logprobs`, through the model's own forward and LM head (logits of
    the completion positions only, ``logits_to_keep``).

    For sharded (FSDP2) models, whose weights are whole only inside their own forward; it holds
    a ``(B, Tc, V)`` logits tensor that the other two never do.
    """
    input_ids = torch.cat([prompt_ids, completion_ids], 1)  # (B, Tp + Tc)
    attention_mask = torch.cat([prompt_mask, completion_mask], 1)  # (B, Tp + Tc)
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)  # (B, Tp + Tc)
    width = completion_ids.shape[1]
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   use_cache=False, logits_to_keep=width + 1).logits[:, :-1]  # (B, Tc, V)
    return token_logprobs(logits, completion_ids, temperature, with_entropy)
