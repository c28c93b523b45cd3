"""GRPOTrainer end to end on tiny models: learning, exact micro-batching, the TRL contract, errors."""

import json

import pytest
import torch

from grpokit import GRPOConfig, GRPOTrainer
from grpokit.trainers.micro_batches import MicroBatch
from grpokit.models import ModelLoadError, build_char_tokenizer, create_tiny_model
from grpokit.rewards import RewardFunctionError

TINY = dict(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64)


def tiny(seed=0):
    tokenizer = build_char_tokenizer()
    return create_tiny_model(tokenizer, seed=seed, **TINY), tokenizer


def fraction_of_a(prompts, completions, **kwargs):
    return [c.count("a") / max(len(c), 1) for c in completions]


def config(tmp_path, **overrides):
    settings = dict(output_dir=str(tmp_path / "run"), max_steps=2, prompts_per_step=2,
                    num_generations=4, max_completion_length=8, learning_rate=1e-3)
    return GRPOConfig(**{**settings, **overrides})


ROWS = [{"prompt": f"say {i}:", "answer": str(i)} for i in range(20)]


def test_policy_gradient_doubles_a_reward_only_sampling_can_raise(tmp_path):
    model, tokenizer = tiny()
    args = config(tmp_path, max_steps=50, prompts_per_step=4, num_generations=8,
                  max_completion_length=16, learning_rate=3e-3)
    trainer = GRPOTrainer(model=model, reward_funcs=[fraction_of_a], args=args,
                          train_dataset=ROWS, processing_class=tokenizer)
    trainer.train(show_progress=False)
    rewards = [json.loads(line)["reward/mean"] for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert len(rewards) == 50
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last >= 2 * first, (first, last)


def gradients_for(micro_batch_size, tmp_path, loss_type, level):
    model, tokenizer = tiny(seed=1)
    args = config(tmp_path, micro_batch_size=micro_batch_size, loss_type=loss_type,
                  importance_sampling_level=level, beta=0.1, num_iterations=2)
    trainer = GRPOTrainer(model=model, reward_funcs=[fraction_of_a], args=args,
                          train_dataset=ROWS, processing_class=tokenizer)
    trainer.generator.manual_seed(0)
    batch = trainer.sample_batch({})
    trainer.optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, lambda s: 1.0)
    grads = {}
    hooks = [p.register_post_accumulate_grad_hook(
        lambda p, name=name: grads.__setitem__(name, p.grad.clone()))
        for name, p in model.named_parameters()]
    stats = trainer.policy_pass(batch)
    for hook in hooks:
        hook.remove()
    return grads, stats


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_micro_batch_size_never_changes_the_gradient(tmp_path, loss_type, level):
    whole, whole_stats = gradients_for(8, tmp_path, loss_type, level)
    split, split_stats = gradients_for(3, tmp_path, loss_type, level)
    assert whole.keys() == split.keys() and whole
    for name in whole:
        torch.testing.assert_close(whole[name], split[name], atol=1e-6, rtol=1e-4)
    assert whole_stats["loss"] == pytest.approx(split_stats["loss"], abs=1e-6)


def test_reward_functions_receive_dataset_columns_per_completion(tmp_path):
    model, tokenizer = tiny()
    seen = {}

    def spy(prompts, completions, answer, completion_ids, **kwargs):
        seen.update(prompts=prompts, answer=answer, n=len(completions), ids=completion_ids,
                    state=kwargs.get("trainer_state"))
        return [None if a == "3" else 1.0 for a in answer]

    trainer = GRPOTrainer(model=model, reward_funcs=[spy], args=config(tmp_path, max_steps=1),
                          train_dataset=ROWS, processing_class=tokenizer)
    trainer.train(show_progress=False)
    assert seen["n"] == 8 and len(seen["answer"]) == 8 and len(seen["ids"]) == 8
    assert seen["answer"][0:4] == [seen["answer"][0]] * 4  # one row's value for its G samples
    assert seen["prompts"][0] == f"say {seen['answer'][0]}:"
    assert seen["state"].global_step == 0


def test_chat_prompts_are_rendered_and_completions_come_as_messages(tmp_path):
    model, tokenizer = tiny()
    received = []

    def spy(prompts, completions, **kwargs):
        received.extend(completions)
        return [0.0] * len(completions)

    rows = [{"prompt": [{"role": "user", "content": f"hi {i}"}]} for i in range(4)]
    trainer = GRPOTrainer(model=model, reward_funcs=[spy], args=config(tmp_path, max_steps=1),
                          train_dataset=rows, processing_class=tokenizer)
    assert tokenizer.decode(trainer.prompt_ids[0]) == "<|user|>hi 0\n<|assistant|>"
    trainer.train(show_progress=False)
    assert received[0][0]["role"] == "assistant" and isinstance(received[0][0]["content"], str)


def test_reference_model_only_with_beta_and_kl_is_measured(tmp_path):
    model, tokenizer = tiny()
    no_ref = GRPOTrainer(model=model, reward_funcs=[fraction_of_a], args=config(tmp_path),
                         train_dataset=ROWS, processing_class=tokenizer)
    assert no_ref.ref_model is None
    with_ref = GRPOTrainer(model=model, reward_funcs=[fraction_of_a],
                           args=config(tmp_path, beta=0.04, max_steps=4, learning_rate=1e-2),
                           train_dataset=ROWS, processing_class=tokenizer)
    assert with_ref.ref_model is not None
    assert not any(p.requires_grad for p in with_ref.ref_model.parameters())
    with_ref.train(show_progress=False)
    kls = [json.loads(line)["kl"] for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert kls[0] == pytest.approx(0.0, abs=1e-6) and kls[-1] > 0


def test_metrics_line_has_every_documented_key(tmp_path):
    model, tokenizer = tiny()
    trainer = GRPOTrainer(model=model, reward_funcs=[fraction_of_a],
                          args=config(tmp_path, max_steps=1, save_steps=1),
                          train_dataset=ROWS, processing_class=tokenizer)
    summary = trainer.train(show_progress=False)
    line = json.loads(open(tmp_path / "run" / "metrics.jsonl").readline())
    for key in ["reward/mean", "reward/std", "reward/fraction_of_a/mean", "reward/fraction_of_a/std",
                "reward/frac_zero_std", "advantage/mean", "advantage/std", "kl", "entropy",
                "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean",
                "clip_ratio/low_min", "clip_ratio/high_max", "completion/mean_length",
                "completion/min_length", "completion/max_length", "completion/truncated_frac",
                "learning_rate", "grad_norm", "time/generate", "time/score", "time/reference", "time/train",
                "completion_tokens_per_s"]:
        assert key in line, key
    assert (tmp_path / "run" / "checkpoint-1" / "config.json").is_file()
    assert (tmp_path / "run" / "model" / "config.json").is_file()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == summary["steps"] == 1


def test_truncated_completions_can_be_masked_out_of_the_loss(tmp_path):
    model, tokenizer = tiny()
    trainer = GRPOTrainer(model=model, reward_funcs=[fraction_of_a],
                          args=config(tmp_path, mask_truncated_completions=True,
                                      max_completion_length=2),
                          train_dataset=ROWS, processing_class=tokenizer)
    batch = trainer.sample_batch({})
    truncated = batch.rollout.truncated
    assert truncated.any()
    assert batch.loss_mask[truncated].sum() == 0 and batch.weights[truncated].sum() == 0


def test_dataset_row_without_prompt_is_named_before_the_model_loads(tmp_path):
    rows = [{"prompt": "a"}, {"question": "b"}]
    with pytest.raises(ValueError, match="row 1") as error:
        GRPOTrainer(model=str(tmp_path / "no-such-model"), reward_funcs=[fraction_of_a],
                    args=config(tmp_path), train_dataset=rows)
    assert "prompt" in str(error.value)


def test_model_path_that_is_not_a_model_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="config.json"):
        GRPOTrainer(model=str(tmp_path / "empty"), reward_funcs=[fraction_of_a],
                    args=config(tmp_path), train_dataset=ROWS)


@pytest.mark.parametrize("bad, message", [
    (lambda prompts, completions, **kw: [1.0], "returned 1 rewards for 8 completions"),
    (lambda prompts, completions, **kw: ["good"] * len(completions), "good"),
])
def test_bad_reward_outputs_name_the_function_and_sample(tmp_path, bad, message):
    model, tokenizer = tiny()
    bad.__name__ = "my_reward"
    trainer = GRPOTrainer(model=model, reward_funcs=[bad], args=config(tmp_path),
                          train_dataset=ROWS, processing_class=tokenizer)
    with pytest.raises(RewardFunctionError, match="my_reward") as error:
        trainer.train(show_progress=False)
    assert message in str(error.value)


def test_reward_weights_must_match_the_functions(tmp_path):
    model, tokenizer = tiny()
    with pytest.raises(ValueError, match="reward_weights has 2 values"):
        GRPOTrainer(model=model, reward_funcs=[fraction_of_a],
                    args=config(tmp_path, reward_weights=[1.0, 2.0]),
                    train_dataset=ROWS, processing_class=tokenizer)


def test_lora_reference_is_the_base_with_adapters_disabled(tmp_path):
    model, tokenizer = tiny()
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    args = config(tmp_path, use_lora=True, lora_r=4, beta=0.04, max_steps=4, learning_rate=2e-2)
    trainer = GRPOTrainer(model=model, reward_funcs=[fraction_of_a], args=args,
                          train_dataset=ROWS, processing_class=tokenizer)
    assert trainer.ref_model is None  # no second copy of the weights
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    trainer.train(show_progress=False)
    kls = [json.loads(line)["kl"] for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert kls[0] == pytest.approx(0.0, abs=1e-6) and kls[-1] > 0
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model").state_dict()
    assert set(merged) == set(base_state)  # saved merged, as a plain model
    assert any(not torch.equal(merged[k], base_state[k]) for k in base_state)


def test_gradient_checkpointing_gives_the_same_gradient(tmp_path):
    def grads(checkpointing):
        model, tokenizer = tiny(seed=2)
        args = config(tmp_path, gradient_checkpointing=checkpointing)
        trainer = GRPOTrainer(model=model, reward_funcs=[fraction_of_a], args=args,
                              train_dataset=ROWS, processing_class=tokenizer)
        batch = trainer.sample_batch({})
        trainer.optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, lambda s: 1.0)
        model.train()
        whole = MicroBatch(torch.arange(8), shared_prefix=not checkpointing)
        logp, _ = trainer._logprobs(model, batch.rollout, whole, False)
        (logp * batch.advantages[:, None]).sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    for plain, checkpointed in zip(grads(False), grads(True)):
        torch.testing.assert_close(plain, checkpointed, atol=1e-6, rtol=1e-4)


def test_bf16_autocast_trains_and_keeps_fp32_weights(tmp_path):
    model, tokenizer = tiny()
    trainer = GRPOTrainer(model=model, reward_funcs=[fraction_of_a],
                          args=config(tmp_path, bf16=True, beta=0.04),
                          train_dataset=ROWS, processing_class=tokenizer)
    trainer.train(show_progress=False)
    lines = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert len(lines) == 2 and all(torch.isfinite(torch.tensor(m["loss"])) for m in lines)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
