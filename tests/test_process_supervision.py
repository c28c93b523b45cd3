"""Process supervision (DeepSeekMath §4.1.3): steps, end tokens, token advantages, step rewards,
per-token advantages in the loss, and a process-supervised GRPO run."""

import json
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

from grpokit import GRPOConfig, GRPOTrainer
from grpokit.algorithms import POLICY_LOSSES, LossSettings, PolicyLossInputs, group_advantages, process_advantages, token_weights
from grpokit.models import build_char_tokenizer, create_tiny_model, save_model
from grpokit.sampling.sampler import Rollout
from grpokit.rewards.step_scores import (
    PROCESS_REWARD_REGISTRY,
    ProcessRewardModel,
    digit_sum_steps,
    register_process_reward,
    resolve_process_reward,
    score_steps,
    split_steps,
    step_end_tokens,
)

TINY = dict(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64)


# ------------------------------------------------------------------ steps and their end tokens

def test_step_ends_map_to_tokens_of_the_character_tokenizer():
    tokenizer = build_char_tokenizer()
    text = "<reasoning>a4=4,b7=11</reasoning><answer>11</answer>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    spans = split_steps(text, ",")
    assert [text[s:e] for s, e in spans] == ["<reasoning>a4=4", "b7=11</reasoning><answer>11</answer>"]
    decoded_length = lambda k: len(tokenizer.decode(ids[:k], skip_special_tokens=True))  # noqa: E731
    # tokens: <reasoning> a 4 = 4 , b 7 = 1 1 </reasoning> <answer> 1 1 </answer> <eos>
    assert step_end_tokens([e for _, e in spans], decoded_length, len(ids)) == [4, 15]


def test_separator_of_several_characters_and_blank_steps():
    text = "first step\n\nsecond\n \nthird\n"
    assert [text[s:e] for s, e in split_steps(text, "\n")] == ["first step", "second", "third"]
    assert split_steps("x ;; y", ";;") == [(0, 2), (4, 6)]
    assert split_steps("", ",") == []


# ------------------------------------------------------------------ token advantages

def test_process_advantages_by_hand_for_two_groups():
    # group 0: steps [1, 0] end at tokens 0, 2 and [0.5] ends at 1; R = [1, 0, 0.5]: mean 0.5,
    # sample std 0.5, so the steps normalise to [1, -1] and [0]
    # group 1: every step scores 1, so it has nothing to compare and stays 0
    advantages = process_advantages([[1.0, 0.0], [0.5], [1.0], [1.0, 1.0]],
                                    [[0, 2], [1], [2], [0, 1]], group_size=2, width=3, eps=0.0)
    expected = torch.tensor([[0.0, -1.0, -1.0],   # token 0: 1 - 1; tokens 1-2: only step 2's -1
                             [0.0, 0.0, 0.0],     # its one step normalises to 0
                             [0.0, 0.0, 0.0],
                             [0.0, 0.0, 0.0]])
    torch.testing.assert_close(advantages, expected)


def test_process_advantages_match_the_formula_term_by_term():
    gen = torch.Generator().manual_seed(0)
    group, width = 3, 7
    steps = [2, 3, 1, 0, 4, 2]
    rewards = [torch.rand(k, generator=gen).tolist() for k in steps]
    ends = [sorted(torch.randperm(width, generator=gen)[:k].tolist()) for k in steps]
    got = process_advantages(rewards, ends, group, width, eps=1e-4)
    for first in (0, group):
        flat = torch.tensor([r for i in range(first, first + group) for r in rewards[i]])
        mean, std = flat.mean().item(), flat.std().item()
        for i in range(first, first + group):
            for t in range(width):
                want = sum((r - mean) / (std + 1e-4) for r, e in zip(rewards[i], ends[i]) if e >= t)
                assert got[i, t].item() == pytest.approx(want, abs=1e-5)
    assert (got[3] == 0).all()  # a completion without steps
    assert got[0, ends[0][-1] + 1:].abs().sum() == 0  # tokens after the last step's end


def test_process_advantages_reject_mismatched_inputs():
    with pytest.raises(ValueError, match="one end token per step"):
        process_advantages([[1.0, 0.0]], [[0]], group_size=1, width=2)
    with pytest.raises(ValueError, match="beyond width 2"):
        process_advantages([[1.0], [0.0]], [[0], [5]], group_size=2, width=2)


# ------------------------------------------------------------------ per-token advantages in the loss

def test_constant_per_token_advantages_give_the_same_loss_and_gradient_as_per_sequence():
    gen = torch.Generator().manual_seed(1)
    old = torch.randn(3, 4, generator=gen)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.float32)
    ref = torch.randn(3, 4, generator=gen)
    per_sequence = torch.tensor([1.0, -0.5, 0.25])
    results = []
    for advantages in (per_sequence[:, None].expand(3, 4), per_sequence[:, None].expand(3, 4).clone()):
        logp = (old + 0.3 * torch.randn(3, 4, generator=torch.Generator().manual_seed(2))).requires_grad_()
        inputs = PolicyLossInputs(logp, old, advantages, mask, ref)
        per_token, metrics = POLICY_LOSSES.get("clip")(inputs, LossSettings(0.2, 0.2, beta=0.1))
        loss = (per_token * token_weights(mask, "grpo")).sum()
        loss.backward()
        results.append((loss.detach(), metrics, logp.grad))
    (loss_a, metrics_a, grad_a), (loss_b, metrics_b, grad_b) = results
    torch.testing.assert_close(loss_a, loss_b)
    torch.testing.assert_close(grad_a, grad_b)
    assert metrics_a.keys() == metrics_b.keys()
    for key in metrics_a:
        torch.testing.assert_close(metrics_a[key], metrics_b[key])


def test_per_token_advantages_by_hand():
    # one row, two tokens, ratios 1.5 and 0.5, advantages +1 and -1, grpo weights 1/2 each:
    # token 0 clips at 1.2 -> -1.2; token 1 clips at 0.8 -> +0.8; loss = (-1.2 + 0.8) / 2
    old = torch.zeros(1, 2)
    logp = torch.log(torch.tensor([[1.5, 0.5]]))
    mask = torch.ones(1, 2)
    inputs = PolicyLossInputs(logp, old, torch.tensor([[1.0, -1.0]]), mask)
    per_token, metrics = POLICY_LOSSES.get("clip")(inputs, LossSettings(0.2, 0.2))
    loss = (per_token * token_weights(mask, "grpo")).sum()
    assert loss.item() == pytest.approx(-0.2)
    assert metrics["clip_high_sum"].item() == 1 and metrics["clip_low_sum"].item() == 1


# ------------------------------------------------------------------ step rewards

def test_digit_sum_steps_scores_each_running_sum():
    prompts = ["sum a4b7c1:"] * 4 + [[{"role": "user", "content": "sum a4b7c1:"}]]
    steps = [
        ["<reasoning>a4=4", "b7=11", "c1=12</reasoning><answer>12</answer>"],  # all right
        ["<reasoning>a4=4", "b7=13", "c1=14</reasoning><answer>14</answer>"],  # slip at b
        ["<reasoning>a4=4", "b7=11", "c1=12</reasoning><answer>13</answer>"],  # wrong answer
        ["<answer>12</answer>"],                                                # no scratchpad
        ["<reasoning>b7=7", "junk", "a4=4b7=11"],                               # wrong order, junk
    ]
    assert digit_sum_steps(prompts, [""] * 5, steps) == [
        [1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0], [0.0, 0.0, 0.0]]


def test_digit_sum_steps_names_a_prompt_without_digits():
    with pytest.raises(ValueError, match="prompt 0 .*'hello'"):
        digit_sum_steps(["hello"], ["x"], [["x"]])


def test_score_steps_passes_columns_and_checks_one_score_per_step():
    seen = {}

    def spy(prompts, completions, steps, answer, completion_ids, trainer_state, **kwargs):
        seen.update(prompts=prompts, answer=answer, state=trainer_state)
        return [[float(len(s)) for s in row] for row in steps]

    scores = score_steps(spy, prompts=["p"], completions=["ab,c", "d"], steps=[["ab", "c"], ["d"]],
                         completion_ids=[[1, 2, 3, 4], [5]], columns={"answer": ["7"]}, trainer_state=3)
    assert scores == [[2.0, 1.0], [1.0]]
    assert seen == {"prompts": ["p", "p"], "answer": ["7", "7"], "state": 3}

    def short(prompts, completions, steps, **kwargs):
        return [[1.0] for _ in steps]

    with pytest.raises(ValueError, match=r"'short' returned \[1.0\] for completion 0; expected 2"):
        score_steps(short, prompts=["p"], completions=["a,b"], steps=[["a", "b"]], completion_ids=[[1]])


def test_process_rewards_resolve_by_name_path_or_model_directory(tmp_path):
    assert resolve_process_reward("digit_sum_steps") is digit_sum_steps
    assert resolve_process_reward("grpokit.rewards.step_scores:digit_sum_steps") is digit_sum_steps
    with pytest.raises(ValueError, match="unknown process reward 'nope'.*digit_sum_steps"):
        resolve_process_reward("nope")
    tokenizer = build_char_tokenizer()
    prm_dir = save_prm(tokenizer, tmp_path / "prm")
    assert isinstance(resolve_process_reward(str(prm_dir)), ProcessRewardModel)


def save_prm(tokenizer, path):
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         num_labels=1, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    return save_model(LlamaForSequenceClassification(config), tokenizer, path)


def test_process_reward_model_scores_each_step_prefix_in_batches(tmp_path):
    prm_dir = save_prm(build_char_tokenizer(), tmp_path / "prm")
    prompts = ["sum a4b7:", "sum a1:"]
    completions = ["a4=4,b7=11", "a1=1"]
    steps = [["a4=4", "b7=11"], ["a1=1"]]
    batched = ProcessRewardModel(prm_dir, batch_size=3)(prompts, completions, steps)
    one_by_one = ProcessRewardModel(prm_dir, batch_size=1)
    assert [len(row) for row in batched] == [2, 1]
    # the score of step j is the model's output on prompt + completion up to step j's end
    for row, prompt, text, ends in zip(batched, prompts, completions, [[4, 10], [4]]):
        for score, end in zip(row, ends):
            alone = one_by_one.model(**one_by_one.tokenizer(prompt + text[:end], return_tensors="pt"))
            assert score == pytest.approx(alone.logits[0, 0].item(), abs=1e-5)


# ------------------------------------------------------------------ GRPO with process supervision

ROWS = [{"prompt": f"sum a{i % 10}b{(3 * i) % 10}:", "answer": str(i % 10 + (3 * i) % 10)} for i in range(12)]


@pytest.fixture
def steps_with_a():
    """A process reward that is 1 for steps containing 'a': untrained models hit it at random."""

    @register_process_reward("test_steps_with_a")
    def steps_with_a(prompts, completions, steps, **kwargs):
        return [[float("a" in step) for step in row] for row in steps]

    yield "test_steps_with_a"
    del PROCESS_REWARD_REGISTRY["test_steps_with_a"]


def config(tmp_path, **overrides):
    settings = dict(output_dir=str(tmp_path / "run"), max_steps=2, prompts_per_step=2,
                    num_generations=4, max_completion_length=12, learning_rate=1e-3,
                    step_separator=" ")
    return GRPOConfig(**{**settings, **overrides})


def test_process_supervised_run_logs_step_rewards(tmp_path, steps_with_a, single_thread):
    tokenizer = build_char_tokenizer()
    model = create_tiny_model(tokenizer, **TINY)
    trainer = GRPOTrainer(model=model, reward_funcs=[], train_dataset=ROWS, processing_class=tokenizer,
                          args=config(tmp_path, process_reward=steps_with_a))
    summary = trainer.train(show_progress=False)
    lines = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert len(lines) == 2
    for line in lines:
        assert 0 <= line["process_reward/mean"] <= 1 and line["process_reward/steps"] >= 1
        assert "reward/mean" not in line and math.isfinite(line["loss"])
    assert summary["reward_first_step"] == lines[0]["process_reward/mean"]


def test_process_advantages_replace_or_add_to_outcome_advantages(tmp_path, steps_with_a, single_thread):
    tokenizer = build_char_tokenizer()

    def batch_for(reward_funcs):
        trainer = GRPOTrainer(model=create_tiny_model(tokenizer, **TINY), reward_funcs=reward_funcs,
                              train_dataset=ROWS, processing_class=tokenizer,
                              args=config(tmp_path, process_reward=steps_with_a))
        trainer.generator.manual_seed(0)
        rows = trainer.stream.next_batch(2)
        scored = trainer.score(rows, trainer.sample(rows, {}))
        return scored, trainer.advantages(scored, scored.rollout.completion_mask.float())

    def length(prompts, completions, **kwargs):
        return [float(len(c)) for c in completions]

    (process_only, process), (both, summed) = batch_for([]), batch_for([length])
    assert process_only.rewards is None and process.shape == process_only.rollout.completion_ids.shape
    assert torch.equal(process_only.rollout.completion_ids, both.rollout.completion_ids)
    outcome = group_advantages(both.rewards.total, 4)
    torch.testing.assert_close(summed, outcome[:, None] + process)
    # some steps contain an 'a' and some do not, so the process advantages are not all 0
    assert process.abs().sum() > 0


def test_digit_sum_steps_scores_the_demo_format_inside_the_trainer(tmp_path, single_thread):
    tokenizer = build_char_tokenizer()
    trainer = GRPOTrainer(model=create_tiny_model(tokenizer, **TINY), reward_funcs=[],
                          train_dataset=ROWS, processing_class=tokenizer,
                          args=config(tmp_path, process_reward="digit_sum_steps", step_separator=",",
                                      num_generations=2))
    good, slipped = "<reasoning>a1=1,b3=4</reasoning><answer>4</answer>", "<reasoning>a1=1,b3=5"
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in (good, slipped)]
    width = max(map(len, ids))
    completion_ids = torch.tensor([row + [0] * (width - len(row)) for row in ids])
    rollout = Rollout(prompt_ids=torch.zeros(1, 1, dtype=torch.long), prompt_mask=torch.ones(1, 1),
                      completion_ids=completion_ids, completion_mask=completion_ids != 0,
                      sampling_logp=torch.zeros(2, width), truncated=torch.zeros(2, dtype=torch.bool),
                      group_size=2)
    scored = trainer.score([ROWS[1]], rollout)
    advantages = trainer.advantages(scored, rollout.completion_mask.float())
    assert scored.step_rewards == [[1.0, 1.0], [1.0, 0.0]]
    # R = [1, 1, 1, 0]: mean 3/4, sample std 1/2, so 1 -> 0.5 and 0 -> -1.5 (eps 1e-4 aside);
    # steps end at token 4 ("a1=1" after <reasoning>) and at 13 (</answer>) / 9 (the "5")
    expected = torch.zeros(2, width)
    expected[0, :5], expected[0, 5:14] = 1.0, 0.5
    expected[1, :5], expected[1, 5:10] = -1.0, -1.5
    torch.testing.assert_close(advantages, expected, atol=1e-3, rtol=0)
