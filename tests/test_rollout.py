"""The sampler: greedy matches transformers, prompts are encoded once, EOS/truncation bookkeeping,
top-k / top-p filtering, seeded sampling, sampling log-probs and row compaction."""

import math

import pytest
import torch

from grpokit.trainers.logprobs import completion_logprobs
from grpokit.sampling.sampler import SamplingParams, continue_generation, filter_logits, generate, left_pad

pytestmark = pytest.mark.usefixtures("single_thread")

PROMPTS = ["sum a4b7:", "hi", "sum a1b2c3d4e5:", "xyz", "<answer>1", "ab", "sum a9:"]
MAX_NEW = 12
NEG_INF = float("-inf")


@pytest.fixture(scope="module")
def prompt_ids(char_tokenizer):
    return [char_tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]


def run(model, tok, prompts, group_size, max_new=MAX_NEW, generator=None, **params):
    return generate(model, prompts, group_size, SamplingParams(max_new_tokens=max_new, **params),
                    tok.eos_token_id, tok.pad_token_id, generator)


def hf_greedy(model, tok, prompt, max_new=MAX_NEW):
    """transformers' own greedy decoding of one unpadded prompt, cut after the first EOS."""
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens=max_new, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    tokens = out[0, len(prompt):].tolist()
    return tokens[: tokens.index(tok.eos_token_id) + 1] if tok.eos_token_id in tokens else tokens


class ForwardLog:
    """Record the ``input_ids`` shape of every forward call of ``model``."""

    def __init__(self, model):
        self.shapes = []
        self.handle = model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        self.shapes.append(tuple(ids.shape))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def check_row_bookkeeping(rollout, eos, pad, max_new):
    """Per row: mask/length stop right after the first EOS, pads after, ``truncated`` iff no EOS."""
    n = rollout.num_completions
    assert rollout.completion_ids.shape == (n, max_new)
    for i in range(n):
        ids = rollout.completion_ids[i].tolist()
        mask = rollout.completion_mask[i].tolist()
        length = int(rollout.completion_lengths()[i])
        assert mask == [1] * length + [0] * (max_new - length)
        assert ids[length:] == [pad] * (max_new - length)
        assert torch.all(rollout.sampling_logp[i, length:] == 0)
        assert torch.all(rollout.sampling_logp[i, :length] <= 0)
        generated = ids[:length]
        if rollout.truncated[i]:
            assert length == max_new and eos not in generated
        else:
            assert 1 <= length <= max_new
            assert generated[-1] == eos and eos not in generated[:-1]
        assert rollout.token_lists()[i] == generated


# ------------------------------------------------------------------------ greedy vs transformers


def test_left_pad_puts_padding_on_the_left():
    ids, mask = left_pad([[5, 6, 7], [8], []], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]


def test_greedy_equals_transformers_generate_per_prompt(varied_model, char_tokenizer, prompt_ids):
    tok, group = char_tokenizer, 2
    rollout = run(varied_model, tok, prompt_ids, group, temperature=0)
    expected = [hf_greedy(varied_model, tok, p) for p in prompt_ids]
    # The model is varied enough to make the comparison meaningful: some rows stop at EOS at
    # different steps, some run to max_new_tokens, and the texts differ.
    lengths = [len(e) for e in expected]
    assert len(set(lengths)) >= 3 and MAX_NEW in lengths and min(lengths) < MAX_NEW
    assert len({tuple(e) for e in expected}) == len(PROMPTS)

    width = max(map(len, prompt_ids))
    assert rollout.prompt_ids.shape == (len(PROMPTS), width)
    assert rollout.prompt_ids[1].tolist() == [tok.pad_token_id] * (width - 2) + prompt_ids[1]
    assert rollout.token_lists() == [e for e in expected for _ in range(group)]
    assert rollout.truncated.tolist() == [tok.eos_token_id not in e for e in expected for _ in range(group)]
    assert rollout.completion_lengths().tolist() == [len(e) for e in expected for _ in range(group)]


def test_each_prompt_is_encoded_once_then_rows_decode_one_token(varied_model, char_tokenizer,
                                                                 prompt_ids):
    prompts, group = prompt_ids[:3], 4  # greedy: prompt 2 ends at step 1, the others later
    with ForwardLog(varied_model) as log:
        rollout = run(varied_model, char_tokenizer, prompts, group, temperature=0)
    n = len(prompts) * group
    assert log.shapes[0] == (len(prompts), max(map(len, prompts)))  # P rows, not P*G
    decode = log.shapes[1:]
    assert decode and all(rows <= n and width == 1 for rows, width in decode)
    steps = int(rollout.completion_lengths().max())
    assert len(decode) == steps - 1  # one forward per generated token after the first
    assert min(rows for rows, _ in decode) < n  # finished rows were dropped from the cache


# ---------------------------------------------------------------------------- EOS and truncation


def test_sampled_rows_stop_right_after_eos_and_truncated_means_no_eos(varied_model, char_tokenizer,
                                                                      prompt_ids):
    tok = char_tokenizer
    gen = torch.Generator().manual_seed(0)
    rollout = run(varied_model, tok, prompt_ids, 4, generator=gen, temperature=1.0)
    check_row_bookkeeping(rollout, tok.eos_token_id, tok.pad_token_id, MAX_NEW)
    truncated = rollout.truncated.tolist()
    assert any(truncated) and not all(truncated)  # both kinds of rows are exercised
    assert len(set(rollout.completion_lengths().tolist())) >= 3


def test_certain_eos_gives_length_one_rows(tiny_model, char_tokenizer, prompt_ids):
    tok = char_tokenizer

    def force_eos(module, args, output):
        output = output.clone()
        output[..., tok.eos_token_id] += 1e4
        return output

    handle = tiny_model.get_output_embeddings().register_forward_hook(force_eos)
    try:
        for params in (dict(temperature=0), dict(temperature=1.0, top_p=0.9)):
            rollout = run(tiny_model, tok, prompt_ids[:3], 2, max_new=5,
                          generator=torch.Generator().manual_seed(0), **params)
            assert rollout.completion_ids.tolist() == [[tok.eos_token_id] + [tok.pad_token_id] * 4] * 6
            assert rollout.completion_mask.tolist() == [[1, 0, 0, 0, 0]] * 6
            assert rollout.truncated.tolist() == [False] * 6
            assert rollout.token_lists() == [[tok.eos_token_id]] * 6
    finally:
        handle.remove()


def test_eos_never_possible_truncates_every_row(tiny_model, char_tokenizer, prompt_ids):
    tok = char_tokenizer

    def ban_eos(module, args, output):
        output = output.clone()
        output[..., tok.eos_token_id] = -1e4
        return output

    handle = tiny_model.get_output_embeddings().register_forward_hook(ban_eos)
    try:
        rollout = run(tiny_model, tok, prompt_ids[:2], 3, max_new=4,
                      generator=torch.Generator().manual_seed(0), temperature=1.0)
    finally:
        handle.remove()
    assert rollout.truncated.tolist() == [True] * 6
    assert rollout.completion_lengths().tolist() == [4] * 6
    check_row_bookkeeping(rollout, tok.eos_token_id, tok.pad_token_id, 4)


def test_eos_at_the_last_allowed_token_is_not_truncation(varied_model, char_tokenizer, prompt_ids):
    tok = char_tokenizer
    expected = [hf_greedy(varied_model, tok, p) for p in prompt_ids]
    # prompt 0 greedily ends with EOS after 8 tokens: with max_new_tokens=8 it just fits.
    length = len(expected[0])
    assert expected[0][-1] == tok.eos_token_id and length < MAX_NEW
    rollout = run(varied_model, tok, prompt_ids[:1], 1, max_new=length, temperature=0)
    assert rollout.truncated.tolist() == [False]
    assert rollout.token_lists() == [expected[0]]
    shorter = run(varied_model, tok, prompt_ids[:1], 1, max_new=length - 1, temperature=0)
    assert shorter.truncated.tolist() == [True]
    assert shorter.token_lists() == [expected[0][:-1]]


# ------------------------------------------------------------------------------- filter_logits


def test_filter_logits_top_k():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [4.0, -1.0, 0.0, 5.0]])
    assert filter_logits(logits, top_k=2).tolist() == [[NEG_INF, 3.0, 2.0, NEG_INF],
                                                       [4.0, NEG_INF, NEG_INF, 5.0]]
    assert filter_logits(logits, top_k=1).tolist() == [[NEG_INF, 3.0, NEG_INF, NEG_INF],
                                                       [NEG_INF, NEG_INF, NEG_INF, 5.0]]
    assert filter_logits(logits, top_k=0).tolist() == logits.tolist()  # 0: off
    assert filter_logits(logits, top_k=4).tolist() == logits.tolist()  # k >= V: nothing dropped
    assert filter_logits(logits, top_k=10).tolist() == logits.tolist()


def kept(logits):
    return torch.isfinite(logits).tolist()


def test_filter_logits_top_p():
    # probabilities 0.15, 0.5, 0.05, 0.3 (sorted: 0.5, 0.3, 0.15, 0.05; mass before each:
    # 0, 0.5, 0.8, 0.95). A token is kept while the mass before it is below top_p.
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]])
    logits = probs.log()
    assert kept(filter_logits(logits, top_p=0.4)) == [[False, True, False, False]]
    assert kept(filter_logits(logits, top_p=0.75)) == [[False, True, False, True]]
    assert kept(filter_logits(logits, top_p=0.85)) == [[True, True, False, True]]
    assert kept(filter_logits(logits, top_p=0.99)) == [[True, True, True, True]]
    assert kept(filter_logits(logits, top_p=1.0)) == [[True, True, True, True]]
    kept_logits = filter_logits(logits, top_p=0.75)
    assert kept_logits[0, 1].item() == pytest.approx(math.log(0.5))  # kept values unchanged
    assert kept_logits[0, 3].item() == pytest.approx(math.log(0.3))
    # renormalised over the nucleus
    assert kept_logits.softmax(-1).tolist()[0] == pytest.approx([0.0, 0.5 / 0.8, 0.0, 0.3 / 0.8])


def test_filter_logits_rows_are_independent_and_top_k_applies_before_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5]]))
    assert kept(filter_logits(logits, top_p=0.75)) == [[True, True, False, False],
                                                       [False, False, True, True]]
    # top_p=0.82 alone keeps three tokens (mass before the third is 0.8). After top_k=3 the
    # rest is renormalised to 0.526, 0.316, 0.158, and the mass before the third is 0.842.
    assert kept(filter_logits(logits, top_p=0.82)) == [[True, True, True, False],
                                                       [False, True, True, True]]
    assert kept(filter_logits(logits, top_k=3, top_p=0.82)) == [[True, True, False, False],
                                                                [False, False, True, True]]


# ------------------------------------------------------------------------------------ sampling


def test_seeded_sampling_is_reproducible(varied_model, char_tokenizer, prompt_ids):
    def sample(seed):
        return run(varied_model, char_tokenizer, prompt_ids, 3,
                   generator=torch.Generator().manual_seed(seed), temperature=1.0, top_p=0.95)

    first, again, other = sample(7), sample(7), sample(8)
    assert torch.equal(first.completion_ids, again.completion_ids)
    assert torch.equal(first.completion_mask, again.completion_mask)
    assert torch.equal(first.sampling_logp, again.sampling_logp)
    assert not torch.equal(first.completion_ids, other.completion_ids)
    # the G rows of one prompt are different samples, not copies
    rows = first.token_lists()
    assert len({tuple(r) for r in rows}) > len(PROMPTS)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_top_k_1_sampling_equals_greedy(varied_model, char_tokenizer, prompt_ids, temperature):
    greedy = run(varied_model, char_tokenizer, prompt_ids, 2, temperature=0)
    top1 = run(varied_model, char_tokenizer, prompt_ids, 2, temperature=temperature, top_k=1,
               generator=torch.Generator().manual_seed(0))
    assert torch.equal(top1.completion_ids, greedy.completion_ids)
    assert torch.equal(top1.completion_mask, greedy.completion_mask)
    assert torch.equal(top1.truncated, greedy.truncated)


def test_greedy_sampling_logp_is_the_untempered_log_prob(varied_model, char_tokenizer,
                                                          prompt_ids):
    greedy = run(varied_model, char_tokenizer, prompt_ids, 1, temperature=0)
    top1 = run(varied_model, char_tokenizer, prompt_ids, 1, temperature=1.0, top_k=1,
               generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(greedy.sampling_logp, top1.sampling_logp, atol=1e-5, rtol=0)


@pytest.mark.parametrize("temperature,top_p,top_k", [(1.0, 1.0, 0), (0.7, 1.0, 0), (0.7, 0.9, 5)])
def test_sampling_logp_equals_completion_logprobs(varied_model, char_tokenizer, prompt_ids,
                                                  temperature, top_p, top_k):
    """The sampler's log-probs are those of the tempered, unfiltered distribution, i.e. exactly
    what the trainer's forward pass recomputes."""
    group = 3
    rollout = run(varied_model, char_tokenizer, prompt_ids, group, temperature=temperature,
                  top_p=top_p, top_k=top_k, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logp, _ = completion_logprobs(
            varied_model,
            rollout.prompt_ids.repeat_interleave(group, 0),
            rollout.prompt_mask.repeat_interleave(group, 0),
            rollout.completion_ids,
            rollout.completion_mask,
            temperature=temperature,
        )
    mask = rollout.completion_mask.bool()
    assert mask.sum() > 3 * len(PROMPTS)
    torch.testing.assert_close(rollout.sampling_logp[mask], logp[mask], atol=1e-4, rtol=0)
    # the values are informative: not all near -log(V)
    assert rollout.sampling_logp[mask].max() > -1.0


def test_generate_restores_training_mode(tiny_model, char_tokenizer, prompt_ids):
    tiny_model.train()
    try:
        run(tiny_model, char_tokenizer, prompt_ids[:2], 2, max_new=2, temperature=0)
        assert tiny_model.training
    finally:
        tiny_model.eval()
    run(tiny_model, char_tokenizer, prompt_ids[:2], 2, max_new=2, temperature=0)
    assert not tiny_model.training


# ------------------------------------------------------------------------------- row compaction


def test_row_compaction_gives_the_same_greedy_tokens(varied_model, char_tokenizer, prompt_ids):
    tok = char_tokenizer
    alone = [run(varied_model, tok, [p], 1, temperature=0).token_lists()[0] for p in prompt_ids]
    with ForwardLog(varied_model) as log:
        together = run(varied_model, tok, prompt_ids, 1, temperature=0)
    decode_rows = [rows for rows, _ in log.shapes[1:]]
    assert min(decode_rows) < len(prompt_ids)  # batch_select_indices dropped finished rows
    assert decode_rows == sorted(decode_rows, reverse=True)
    assert together.token_lists() == alone

    with ForwardLog(varied_model) as log:
        grouped = run(varied_model, tok, prompt_ids, 3, temperature=0)
    assert min(rows for rows, _ in log.shapes[1:]) < 3 * len(prompt_ids)
    assert grouped.token_lists() == [t for t in alone for _ in range(3)]


# ------------------------------------------------------------------------ continuing from row caches


def test_a_continuation_from_row_caches_equals_decoding_the_whole_context(varied_model, char_tokenizer, prompt_ids):
    tok = char_tokenizer
    caches = {}
    first = generate(varied_model, prompt_ids, 2, SamplingParams(max_new_tokens=MAX_NEW), tok.eos_token_id,
                     tok.pad_token_id, torch.Generator().manual_seed(0), row_caches=caches)
    ended = [i for i in range(first.num_completions) if not first.truncated[i]]
    assert sorted(caches) == ended and len(ended) >= 4
    turns = first.token_lists()
    for i in ended:  # every context token but the last sampled one, which is not fed yet
        assert caches[i].length == len(prompt_ids[i // 2]) + len(turns[i]) - 1
    appended = [tok(text, add_special_tokens=False)["input_ids"] for text in ["ok:", "a much longer reply:"]]
    new_ids = [[turns[i][-1], *appended[k % 2]] for k, i in enumerate(ended)]  # suffixes of different lengths
    params = SamplingParams(max_new_tokens=MAX_NEW, temperature=0)
    next_caches = {}
    continued = continue_generation(varied_model, [caches[i] for i in ended], new_ids, params, tok.eos_token_id,
                                    tok.pad_token_id, row_caches=next_caches)
    contexts = [prompt_ids[i // 2] + turns[i] + new[1:] for i, new in zip(ended, new_ids)]
    whole = generate(varied_model, contexts, 1, params, tok.eos_token_id, tok.pad_token_id)
    assert continued.token_lists() == whole.token_lists()
    torch.testing.assert_close(continued.sampling_logp, whole.sampling_logp, atol=1e-5, rtol=1e-5)
    assert next_caches  # and a third turn can continue from these
    for row, cache in next_caches.items():
        assert cache.length == len(contexts[row]) + len(continued.token_lists()[row]) - 1
