"""The fast paths give the same numbers as the plain ones: cache, LM head, micro-batch plans."""

import torch

from grpokit.trainers.micro_batches import group_plan, plan_micro_batches, sorted_plan
from grpokit.trainers.logprobs import completion_logprobs, head_logprobs, shared_prefix_logprobs, token_logprobs
from grpokit.models import build_char_tokenizer, create_tiny_model
from grpokit.sampling.sampler import SamplingParams, generate

TINY = dict(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64)


def test_preallocated_cache_and_compaction_match_model_generate():
    tokenizer = build_char_tokenizer()
    model = create_tiny_model(tokenizer, seed=3, **TINY).eval()
    texts = ["sum a1b2:", "a much longer prompt than the others", "x"]
    prompts = [tokenizer(t)["input_ids"] for t in texts]
    eos = tokenizer("a")["input_ids"][0]  # a frequent token as EOS, so rows finish unevenly
    rollout = generate(model, prompts, 2, SamplingParams(24, temperature=0), eos,
                       tokenizer.pad_token_id)
    for i, prompt in enumerate(prompts):
        expected = model.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False,
                                  eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
        expected = expected[0, len(prompt):].tolist()
        for row in (2 * i, 2 * i + 1):
            assert rollout.token_lists()[row] == expected


def test_fused_head_matches_autograd_through_full_logits():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 30, bias=False).double()
    hidden = torch.randn(2, 5, 8, dtype=torch.double, requires_grad=True)
    targets, weights = torch.randint(0, 30, (2, 5)), torch.randn(2, 5, dtype=torch.double)
    logp, entropy = head_logprobs(head, hidden, targets, temperature=0.7)
    ref_logp, ref_entropy = token_logprobs(head(hidden), targets, 0.7, with_entropy=True)
    torch.testing.assert_close(logp, ref_logp.to(logp.dtype), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(entropy, ref_entropy.to(entropy.dtype), atol=1e-5, rtol=1e-5)
    fused = torch.autograd.grad((logp * weights).sum(), [hidden, head.weight])
    plain = torch.autograd.grad((ref_logp * weights).sum(), [hidden, head.weight])
    for a, b in zip(fused, plain):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_shared_prefix_equals_one_prompt_per_row_with_gradients():
    tokenizer = build_char_tokenizer()
    model = create_tiny_model(tokenizer, seed=4, **TINY)
    prompts = [tokenizer(t)["input_ids"] for t in ["hello", "a longer prompt"]]
    rollout = generate(model, prompts, 3, SamplingParams(10), tokenizer.eos_token_id,
                       tokenizer.pad_token_id, torch.Generator().manual_seed(0))
    mask = rollout.completion_mask.bool()
    owner = torch.arange(6) // 3
    per_row, _ = completion_logprobs(model, rollout.prompt_ids[owner], rollout.prompt_mask[owner],
                                     rollout.completion_ids, rollout.completion_mask)
    grads_rows = torch.autograd.grad(per_row[mask].sum(), list(model.parameters()))
    shared, _ = shared_prefix_logprobs(model, rollout.prompt_ids, rollout.prompt_mask,
                                       rollout.completion_ids, rollout.completion_mask)
    grads_shared = torch.autograd.grad(shared[mask].sum(), list(model.parameters()))
    torch.testing.assert_close(per_row[mask], shared[mask], atol=1e-5, rtol=1e-5)
    for a, b in zip(grads_rows, grads_shared):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_micro_batch_plans_cover_every_row_once_and_pick_the_cheaper():
    lengths = torch.tensor([120, 3, 4, 5, 110, 2, 6, 7])
    prompts = torch.tensor([8, 8])
    for plan, _ in (group_plan(lengths, prompts, 4, 4), sorted_plan(lengths, prompts, 4, 4)):
        assert sorted(torch.cat([m.rows for m in plan]).tolist()) == list(range(8))
    # groups: each prompt once + 4 rows at the group's longest; sorted: the two long rows together
    assert group_plan(lengths, prompts, 4, 4)[1] == 8 + 4 * 120 + 8 + 4 * 110
    assert sorted_plan(lengths, prompts, 4, 4)[1] == 4 * (8 + 120) + 4 * (8 + 5)
    assert [m.shared_prefix for m in plan_micro_batches(lengths, prompts, 4, 4)] == [False, False]
    long_prompts = torch.tensor([500, 500])
    assert all(m.shared_prefix for m in plan_micro_batches(lengths, long_prompts, 4, 4))
