"""Per-token log-probs: hand-computed values, and the padded batched forward against a plain
forward of each row alone."""

import math

import pytest
import torch

import grpokit.trainers.logprobs as logprobs_module
from grpokit.trainers.logprobs import completion_logprobs, shared_prefix_logprobs, token_logprobs
from grpokit.sampling.sampler import left_pad

pytestmark = pytest.mark.usefixtures("single_thread")


def entropy_of(probs):
    return -sum(p * math.log(p) for p in probs if p > 0)


# ------------------------------------------------------------------------------ token_logprobs


def test_token_logprobs_hand_computed():
    probs = [0.1, 0.2, 0.3, 0.4]
    logits = torch.log(torch.tensor([[probs, [0.25] * 4]]))  # (B=1, T=2, V=4)
    logp, entropy = token_logprobs(logits, torch.tensor([[3, 0]]), with_entropy=True)
    assert logp.shape == entropy.shape == (1, 2)
    assert logp.tolist()[0] == pytest.approx([math.log(0.4), math.log(0.25)], abs=1e-6)
    assert entropy.tolist()[0] == pytest.approx([entropy_of(probs), math.log(4)], abs=1e-6)


def test_token_logprobs_shift_invariant_and_no_entropy_by_default():
    logits = torch.tensor([[[1.0, 2.0, 3.0]], [[101.0, 102.0, 103.0]]])  # (B=2, T=1, V=3)
    logp, entropy = token_logprobs(logits, torch.tensor([[2], [0]]))
    assert entropy is None
    z = math.log(math.exp(1) + math.exp(2) + math.exp(3))
    assert logp.flatten().tolist() == pytest.approx([3 - z, 1 - z], abs=1e-5)


def test_token_logprobs_with_temperature():
    raw = [1.0, 2.0, 4.0]
    logits = torch.tensor([[raw]])
    for temperature in (0.5, 2.0):
        scaled = [x / temperature for x in raw]
        z = math.log(sum(math.exp(s) for s in scaled))
        probs = [math.exp(s - z) for s in scaled]
        logp, entropy = token_logprobs(logits, torch.tensor([[1]]), temperature, with_entropy=True)
        assert logp.item() == pytest.approx(scaled[1] - z, abs=1e-5)
        assert entropy.item() == pytest.approx(entropy_of(probs), abs=1e-5)
    # higher temperature: flatter distribution, higher entropy
    _, cold = token_logprobs(logits, torch.tensor([[1]]), 0.5, with_entropy=True)
    _, hot = token_logprobs(logits, torch.tensor([[1]]), 2.0, with_entropy=True)
    assert cold.item() < hot.item() < math.log(3)


def test_token_logprobs_bfloat16_logits_are_computed_in_float32():
    logits = torch.tensor([[[0.0, math.log(3.0)]]], dtype=torch.bfloat16)
    logp, _ = token_logprobs(logits, torch.tensor([[1]]))
    assert logp.dtype == torch.float32
    assert logp.item() == pytest.approx(math.log(0.75), abs=2e-2)


# ------------------------------------------------------------------------- completion_logprobs

PROMPTS = [[17, 18, 19, 20, 21], [40], [5, 30, 31]]
COMPLETIONS = [[22, 23, 1], [41, 42, 43, 44, 45], [32]]


def padded_batch(pad_id=0):
    prompt_ids, prompt_mask = left_pad(PROMPTS, pad_id)
    width = max(map(len, COMPLETIONS))
    completion_ids = torch.full((len(COMPLETIONS), width), pad_id)
    completion_mask = torch.zeros((len(COMPLETIONS), width), dtype=torch.long)
    for row, c in enumerate(COMPLETIONS):
        completion_ids[row, : len(c)] = torch.tensor(c)
        completion_mask[row, : len(c)] = 1
    return prompt_ids, prompt_mask, completion_ids, completion_mask


def reference(model, temperature):
    """Log-probs and entropies from a plain forward of each unpadded ``prompt + completion``."""
    logps, entropies = [], []
    with torch.no_grad():
        for prompt, completion in zip(PROMPTS, COMPLETIONS):
            logits = model(input_ids=torch.tensor([prompt + completion])).logits[0].float()
            dist = (logits / temperature).log_softmax(-1)
            predicting = dist[len(prompt) - 1 : len(prompt) - 1 + len(completion)]
            logps.append(predicting[torch.arange(len(completion)), torch.tensor(completion)])
            entropies.append(-(predicting.exp() * predicting).sum(-1))
    return logps, entropies


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_completion_logprobs_equal_unpadded_forward_per_row(varied_model, temperature):
    batch = padded_batch()
    with torch.no_grad():
        logp, entropy = completion_logprobs(varied_model, *batch, temperature=temperature,
                                            with_entropy=True)
    assert logp.shape == entropy.shape == batch[2].shape
    expected_logp, expected_entropy = reference(varied_model, temperature)
    for row, completion in enumerate(COMPLETIONS):
        n = len(completion)
        torch.testing.assert_close(logp[row, :n], expected_logp[row], atol=1e-4, rtol=0)
        torch.testing.assert_close(entropy[row, :n], expected_entropy[row], atol=1e-4, rtol=0)
    # The model is far from uniform (entropy ln V = 4.63), so agreement is informative.
    assert min(e.min().item() for e in expected_entropy) < 3.0


def test_completion_logprobs_without_entropy(varied_model):
    with torch.no_grad():
        logp, entropy = completion_logprobs(varied_model, *padded_batch())
    assert entropy is None and logp.shape == (3, 5)


def test_shared_prefix_logprobs_equal_completion_logprobs(varied_model):
    """One prompt per group of G=2 completions, run once, gives the per-row numbers."""
    prompt_ids, prompt_mask, completion_ids, completion_mask = padded_batch()
    group = 2
    order = [0, 1, 1, 2, 2, 0]  # a second completion per prompt, reusing the others' tokens
    completion_ids, completion_mask = completion_ids[order], completion_mask[order]
    with torch.no_grad():
        shared, shared_entropy = shared_prefix_logprobs(
            varied_model, prompt_ids, prompt_mask, completion_ids, completion_mask,
            temperature=0.7, with_entropy=True)
        full, full_entropy = completion_logprobs(
            varied_model, prompt_ids.repeat_interleave(group, 0),
            prompt_mask.repeat_interleave(group, 0), completion_ids, completion_mask,
            temperature=0.7, with_entropy=True)
    mask = completion_mask.bool()
    torch.testing.assert_close(shared[mask], full[mask], atol=1e-4, rtol=0)
    torch.testing.assert_close(shared_entropy[mask], full_entropy[mask], atol=1e-4, rtol=0)


def test_chunked_head_gives_the_same_values_and_gradients(char_tokenizer, varied_model,
                                                          monkeypatch):
    """With gradients on, the LM head runs in checkpointed chunks; the result must not depend on
    the chunk size."""
    batch = padded_batch()
    mask = batch[3].float()

    def loss_and_grads():
        varied_model.zero_grad(set_to_none=True)
        logp, entropy = completion_logprobs(varied_model, *batch, temperature=0.9,
                                            with_entropy=True)
        ((logp + 0.1 * entropy) * mask).sum().backward()
        grads = {n: p.grad.clone() for n, p in varied_model.named_parameters() if p.grad is not None}
        return logp.detach(), grads

    whole, whole_grads = loss_and_grads()
    monkeypatch.setattr(logprobs_module, "HEAD_CHUNK_TOKENS", 4)  # 15 positions -> 4 chunks
    chunked, chunked_grads = loss_and_grads()
    varied_model.zero_grad(set_to_none=True)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)
    assert whole_grads.keys() == chunked_grads.keys() and len(whole_grads) > 0
    for name in whole_grads:
        torch.testing.assert_close(chunked_grads[name], whole_grads[name], atol=1e-5, rtol=1e-4)
