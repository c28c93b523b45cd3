"""The sampler: G completions per prompt, each prompt encoded once and its KV cache shared.

``generate`` runs the P unique prompts through the model once (left-padded), copies the KV
cache G times (``batch_repeat_interleave``), then decodes token by token. The cache is
preallocated for prompt + completion, so a decode step writes one position instead of copying
the whole cache (``torch.cat``), which is what makes long prompts cheap. Rows that emitted EOS
stop: once a quarter of the live rows have finished, they are dropped from the cache
(``batch_select_indices``), so a long tail of unfinished rows costs only their own compute.

The randomness is drawn up front: one uniform number per completion row and decode position,
``(N, max_new_tokens)``. Row i's tokens therefore depend only on its own row of that table,
never on which other rows share the batch or when they finish, which is what lets several
processes split one batch and sample exactly what a single process would (each draws the
table of the global batch and uses its own rows).

Multi-turn episodes keep their cache across turns: ``generate(..., row_caches={})`` hands back
each finished row's keys and values (a :class:`RowCache`), and :func:`continue_generation`
decodes the next turn of such rows after feeding only what came since (the turn's last token
and the environment's tokens), instead of encoding the whole conversation again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from grpokit.models.transformers_compat import with_cache
from grpokit.sampling.kv_cache import RowCache, keep_row_caches, preallocated_cache


@dataclass(frozen=True)
class SamplingParams:
    """How to pick the next token; ``temperature=0`` means greedy."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0


@dataclass
class Rollout:
    """P prompts × G completions. Completion row ``i`` belongs to prompt ``i // G``."""

    prompt_ids: torch.Tensor  # (P, Tp) left-padded
    prompt_mask: torch.Tensor  # (P, Tp)
    completion_ids: torch.Tensor  # (N, Tc) right-padded, N = P·G, EOS included
    completion_mask: torch.Tensor  # (N, Tc) 1 on generated tokens (EOS included)
    sampling_logp: torch.Tensor  # (N, Tc) log-prob of each token at the sampling temperature
    truncated: torch.Tensor  # (N,) bool: no EOS within max_new_tokens
    group_size: int
    # multi-turn episodes (grpokit.agents): 1 where the policy sampled the token, 0 on the
    # environment's tokens; and each episode's messages (assistant turns and tool replies)
    sampled_mask: torch.Tensor | None = None  # (N, Tc)
    conversations: list[list[dict]] | None = None
    # keywords for the reward functions, one value per completion (an environment's instances,
    # the prompts its reset wrote, a rollout function's extra fields)
    reward_kwargs: dict[str, list] | None = None

    @property
    def num_completions(self) -> int:
        return self.completion_ids.shape[0]

    def loss_tokens(self) -> torch.Tensor:
        """``(N, Tc)`` 1 on the tokens the policy is trained on: every generated token, or in
        multi-turn episodes only the sampled ones (environment tokens are context)."""
        return self.completion_mask if self.sampled_mask is None else self.sampled_mask

    def completion_lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(1)  # (N,)

    def token_lists(self) -> list[list[int]]:
        """Each completion's generated token ids (EOS included, padding removed)."""
        lengths = self.completion_lengths().tolist()
        return [row[:n] for row, n in zip(self.completion_ids.tolist(), lengths)]


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into ``(ids, mask)``.

    >>> ids, mask = left_pad([[5, 6], [7]], pad_id=0)
    >>> ids.tolist(), mask.tolist()
    ([[5, 6], [0, 7]], [[1, 1], [0, 1]])
    """
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq):] = torch.tensor(seq)
            mask[row, width - len(seq):] = 1
    return ids, mask


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k / nucleus (top-p) set to -inf.

    >>> filter_logits(torch.tensor([[1.0, 3.0, 2.0]]), top_k=2).tolist()
    [[-inf, 3.0, 2.0]]
    >>> [round(p, 4) for p in filter_logits(torch.log(torch.tensor([[0.5, 0.3, 0.2]])), top_p=0.7).exp()[0].tolist()]
    [0.5, 0.3, 0.0]
    """
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (N, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)  # (N, V)
        drop_sorted = cumulative - sorted_logits.softmax(-1) >= top_p  # mass before this token
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_categorical(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """One token per row of ``probs`` (N, V) by inverting its CDF at ``uniforms`` (N,) in [0, 1).

    Same distribution as ``torch.multinomial(probs, 1)``, at a fraction of its cost on CPU for
    large vocabularies (one cumulative sum and a binary search instead of per-row setup).

    >>> sample_categorical(torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]]), torch.tensor([0.7, 0.4])).tolist()
    [1, 1]
    """
    cdf = probs.cumsum(-1)  # (N, V)
    draw = uniforms.to(probs.device, probs.dtype)[:, None]  # (N, 1)
    tokens = torch.searchsorted(cdf, draw * cdf[:, -1:], right=True).squeeze(1)  # (N,)
    return tokens.clamp_(max=probs.shape[1] - 1)


def pick_tokens(
    logits: torch.Tensor, params: SamplingParams, uniforms: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample (or argmax) one token per row, row i at ``uniforms[i]``; return ``(tokens,
    log-probs)``, both ``(N,)``.

    The log-prob is taken under the tempered, unfiltered distribution: the same quantity the
    trainer's forward pass computes, so it can serve as the "old" log-prob.
    """
    tempered = logits / params.temperature if params.temperature > 0 else logits  # (N, V)
    log_total = torch.logsumexp(tempered, -1, keepdim=True)  # (N, 1)
    if params.temperature == 0:
        tokens = logits.argmax(-1)  # (N,)
    elif params.top_k or params.top_p < 1.0:
        tokens = sample_categorical(filter_logits(tempered, params.top_k, params.top_p).softmax(-1),
                                    uniforms)
    else:
        tokens = sample_categorical((tempered - log_total).exp_(), uniforms)
    logp = tempered.gather(-1, tokens[:, None]) - log_total  # (N, 1)
    return tokens, logp.squeeze(1)


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    prompt_ids: list[list[int]],
    group_size: int,
    params: SamplingParams,
    eos_token_id: int,
    pad_token_id: int,
    generator: torch.Generator | None = None,
    uniforms: torch.Tensor | None = None,
    keep_decoding=None,
    row_caches: dict[int, RowCache] | None = None,
) -> Rollout:
    """Sample ``group_size`` completions for each prompt (token lists, unpadded).

    ``uniforms`` ``(P·G, max_new_tokens)`` are the random numbers to sample with; by default
    they are drawn from ``generator``. ``keep_decoding(done: bool) -> bool``, when given, is told
    after every decode position whether this call's rows are all done and answers whether to go
    on: processes whose models take part in collectives (FSDP) decode in lockstep this way.
    ``row_caches``, when given, receives the :class:`RowCache` of every row that ended with EOS
    (by completion row), for :func:`continue_generation`.
    """
    uniforms = _uniforms(len(prompt_ids) * group_size, params, generator, uniforms)
    was_training = model.training
    model.eval()
    try:
        return _generate(model, prompt_ids, group_size, params, eos_token_id, pad_token_id,
                         uniforms, keep_decoding, row_caches)
    finally:
        model.train(was_training)


@torch.no_grad()
def continue_generation(
    model: PreTrainedModel,
    caches: list[RowCache],
    new_ids: list[list[int]],
    params: SamplingParams,
    eos_token_id: int,
    pad_token_id: int,
    generator: torch.Generator | None = None,
    row_caches: dict[int, RowCache] | None = None,
) -> Rollout:
    """One more completion per row of an earlier :func:`generate`: row ``i`` continues from
    ``caches[i]`` after the tokens ``new_ids[i]`` (the last token it sampled, then whatever was
    appended, e.g. an environment's message and the next assistant header). Only ``new_ids`` are
    encoded. The returned rollout's prompts are ``new_ids``; ``row_caches`` as for :func:`generate`.

    The cache is laid out as ``[pad][row's cache][pad][new ids]``, the gaps masked and position ids
    counting real tokens only, so every row sees exactly its own context in order.
    """
    uniforms = _uniforms(len(caches), params, generator, None)
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        cached = max(c.length for c in caches)
        new, new_mask = left_pad(new_ids, pad_token_id)
        old_mask = torch.zeros((len(caches), cached), dtype=torch.long)
        for row, c in enumerate(caches):
            old_mask[row, cached - c.length:] = 1
        mask = torch.cat([old_mask, new_mask], 1).to(device)
        cache = preallocated_cache(model, mask.shape[1] + params.max_new_tokens)
        for index, layer in enumerate(cache.layers):
            layer.fill([c.keys[index] for c in caches], [c.values[index] for c in caches], cached)
        out = model(input_ids=new.to(device), attention_mask=mask,
                    position_ids=(mask.cumsum(1) - 1).clamp(min=0)[:, cached:], **with_cache(cache),
                    logits_to_keep=1)
        decoded = _decode(model, out.logits[:, -1].float(), cache, mask, params, eos_token_id, uniforms,
                          None, row_caches)
        return _rollout(new, new_mask, decoded, 1, pad_token_id)
    finally:
        model.train(was_training)


def _uniforms(rows: int, params: SamplingParams, generator, uniforms):
    if uniforms is not None:
        return uniforms
    return (random_table(rows, params.max_new_tokens, generator) if params.temperature > 0
            else torch.zeros((rows, params.max_new_tokens)))


def random_table(rows: int, positions: int, generator: torch.Generator | None) -> torch.Tensor:
    """``(rows, positions)`` uniforms on the CPU, drawn on the generator's device.

    >>> random_table(2, 3, torch.Generator().manual_seed(0)).shape
    torch.Size([2, 3])
    """
    device = generator.device if generator is not None else "cpu"
    return torch.rand((rows, positions), generator=generator, device=device).cpu()


def _generate(model, prompt_ids, group_size, params, eos_token_id, pad_token_id, uniforms,
              keep_decoding, row_caches):
    device = next(model.parameters()).device
    p_ids, p_mask = left_pad(prompt_ids, pad_token_id)
    cache = preallocated_cache(model, p_ids.shape[1] + params.max_new_tokens)
    out = model(
        input_ids=p_ids.to(device),
        attention_mask=p_mask.to(device),
        position_ids=(p_mask.cumsum(1) - 1).clamp(min=0).to(device),
        **with_cache(cache),
        logits_to_keep=1,
    )
    cache.batch_repeat_interleave(group_size)
    decoded = _decode(model, out.logits[:, -1].float().repeat_interleave(group_size, 0), cache,
                      p_mask.repeat_interleave(group_size, 0).to(device), params,
                      eos_token_id, uniforms, keep_decoding, row_caches)
    return _rollout(p_ids, p_mask, decoded, group_size, pad_token_id)


def _rollout(p_ids, p_mask, decoded, group_size, pad_token_id) -> Rollout:
    tokens, logps, lengths, truncated = decoded
    completion_mask = torch.arange(tokens.shape[1])[None, :] < lengths[:, None]  # (N, Tc)
    return Rollout(
        prompt_ids=p_ids,
        prompt_mask=p_mask,
        completion_ids=tokens.masked_fill(~completion_mask, pad_token_id),
        completion_mask=completion_mask.long(),
        sampling_logp=logps * completion_mask,
        truncated=truncated,
        group_size=group_size,
    )


def _decode(model, logits, cache, prompt_mask, params, eos_token_id, uniforms, keep_decoding, row_caches=None):
    """Token-by-token decoding with compaction of finished rows; returns CPU tensors. With
    ``row_caches``, the cache of each row that ended with EOS is copied out before it is
    dropped."""
    n, max_new = logits.shape[0], params.max_new_tokens
    tokens = torch.zeros((n, max_new), dtype=torch.long)
    logps = torch.zeros((n, max_new))
    lengths = torch.full((n,), max_new, dtype=torch.long)
    live = torch.arange(n)  # original row index of each row still in the cache
    mask = torch.cat([prompt_mask, torch.ones((n, max_new), dtype=torch.long,
                                              device=prompt_mask.device)], 1)
    positions = prompt_mask.sum(1)  # (n,) position id of the next token
    finished = torch.zeros(n, dtype=torch.bool)
    for t in range(max_new):
        step_tokens, step_logp = pick_tokens(logits, params, uniforms[live, t])
        step_tokens, step_logp = step_tokens.cpu(), step_logp.cpu()
        active = ~finished[live]
        tokens[live[active], t] = step_tokens[active]
        logps[live[active], t] = step_logp[active]
        newly_done = active & (step_tokens == eos_token_id)
        lengths[live[newly_done]] = t + 1
        finished[live[newly_done]] = True
        done = bool(finished.all())
        if keep_decoding is not None and t < max_new - 1:
            done = not keep_decoding(done)  # done only when every process is
        if t == max_new - 1 or done:
            break
        if (~finished[live]).sum() <= 0.75 * len(live):
            keep = (~finished[live]).nonzero().squeeze(1)
            if row_caches is not None:
                dropped = finished[live].nonzero().squeeze(1)
                keep_row_caches(cache, mask, live, dropped, lengths, prompt_mask.shape[1], row_caches)
            if keep.numel() == 0:  # done, decoding on for the other processes: keep one row
                keep = torch.zeros(1, dtype=torch.long)
            cache.batch_select_indices(keep.to(mask.device))
            live, mask, positions = live[keep], mask[keep.to(mask.device)], positions[keep.to(mask.device)]
            step_tokens = step_tokens[keep]
        width = prompt_mask.shape[1] + t + 1
        out = model(
            input_ids=step_tokens[:, None].to(mask.device),
            attention_mask=mask[:, :width],
            position_ids=(positions + t)[:, None],
            **with_cache(cache),
        )
        logits = out.logits[:, -1].float()
    if row_caches is not None:
        ended = (finished[live] & ~torch.tensor([int(r) in row_caches for r in live])).nonzero().squeeze(1)
        keep_row_caches(cache, mask, live, ended, lengths, prompt_mask.shape[1], row_caches)
    truncated = ~finished
    return tokens, logps, lengths, truncated


def select_groups(rollout: Rollout, groups: torch.Tensor) -> Rollout:
    """The rollout of the groups (prompts) at indices ``groups``, in that order.

    >>> r = Rollout(torch.tensor([[5], [6]]), torch.ones(2, 1), torch.tensor([[1], [2], [3], [4]]),
    ...             torch.ones(4, 1), torch.zeros(4, 1), torch.zeros(4, dtype=torch.bool), group_size=2)
    >>> select_groups(r, torch.tensor([1])).completion_ids.tolist()
    [[3], [4]]
    """
    rows = (groups[:, None] * rollout.group_size + torch.arange(rollout.group_size)).flatten()
    return Rollout(rollout.prompt_ids[groups], rollout.prompt_mask[groups], rollout.completion_ids[rows],
                   rollout.completion_mask[rows], rollout.sampling_logp[rows], rollout.truncated[rows],
                   rollout.group_size,
                   None if rollout.sampled_mask is None else rollout.sampled_mask[rows],
                   None if rollout.conversations is None else [rollout.conversations[i] for i in rows.tolist()],
                   None if rollout.reward_kwargs is None else
                   {key: [values[i] for i in rows.tolist()] for key, values in rollout.reward_kwargs.items()})


def concat_rollouts(parts: list[Rollout]) -> Rollout:
    """One rollout of several (same group size): prompts left-padded and completions right-padded
    to the widest part (padding id 0, mask 0)."""
    prompt_width = max(p.prompt_ids.shape[1] for p in parts)
    width = max(p.completion_ids.shape[1] for p in parts)
    left = lambda t, w: torch.nn.functional.pad(t, (w - t.shape[1], 0))  # noqa: E731
    right = lambda t, w: torch.nn.functional.pad(t, (0, w - t.shape[1]))  # noqa: E731
    return Rollout(torch.cat([left(p.prompt_ids, prompt_width) for p in parts]),
                   torch.cat([left(p.prompt_mask, prompt_width) for p in parts]),
                   torch.cat([right(p.completion_ids, width) for p in parts]),
                   torch.cat([right(p.completion_mask, width) for p in parts]),
                   torch.cat([right(p.sampling_logp, width) for p in parts]),
                   torch.cat([p.truncated for p in parts]), parts[0].group_size,
                   None if parts[0].sampled_mask is None else torch.cat([right(p.sampled_mask, width) for p in parts]),
                   None if parts[0].conversations is None else sum((p.conversations for p in parts), []),
                   None if parts[0].reward_kwargs is None else
                   {key: sum((p.reward_kwargs[key] for p in parts), []) for key in parts[0].reward_kwargs})
