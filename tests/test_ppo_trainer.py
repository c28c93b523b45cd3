"""PPOTrainer end to end on tiny models: outputs, what it holds, exact micro-batching, value learning."""

import json

import pytest
import torch

from grpokit.algorithms.value import value_loss
from grpokit.models import build_char_tokenizer, create_tiny_model, save_model
from grpokit.trainers.ppo import PPOConfig, PPOTrainer, completion_values, load_value_model

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = dict(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64)
ROWS = [{"prompt": f"say {i}:", "answer": str(i)} for i in range(20)]


def tiny(seed=0):
    tokenizer = build_char_tokenizer()
    return create_tiny_model(tokenizer, seed=seed, **TINY), tokenizer


def fraction_of_a(prompts, completions, **kwargs):
    return [c.count("a") / max(len(c), 1) for c in completions]


def trainer_for(tmp_path, seed=0, **overrides):
    model, tokenizer = tiny(seed)
    settings = dict(output_dir=str(tmp_path / "run"), max_steps=3, prompts_per_step=4,
                    num_generations=2, max_completion_length=8, learning_rate=1e-3,
                    num_ppo_epochs=2)
    args = PPOConfig(**{**settings, **overrides})
    return PPOTrainer(model=model, reward_funcs=[fraction_of_a], args=args, train_dataset=ROWS,
                      processing_class=tokenizer)


def snapshot(module):
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def test_training_writes_outputs_and_moves_policy_and_value_model(tmp_path):
    trainer = trainer_for(tmp_path)
    policy_before, value_before = snapshot(trainer.model), snapshot(trainer.value_model)
    reference_before = snapshot(trainer.ref_model)
    summary = trainer.train(show_progress=False)

    out = tmp_path / "run"
    lines = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [m["step"] for m in lines] == [1, 2, 3]
    for key in ("reward/mean", "kl", "loss/value", "loss/policy", "clip_ratio/policy",
                "clip_ratio/value", "value/explained_variance", "time/generate", "time/value",
                "time/train", "completion_tokens_per_s"):
        assert key in lines[0], key
    assert (out / "config.yaml").is_file() and (out / "model" / "config.json").is_file()
    assert (out / "value_model" / "config.json").is_file()
    assert summary["stage"] == "ppo" and summary["steps"] == 3
    assert json.loads((out / "summary.json").read_text())["value_model_dir"] == str(out / "value_model")

    changed = lambda before, module: [n for n, p in module.named_parameters()  # noqa: E731
                                      if not torch.equal(before[n], p)]
    assert changed(policy_before, trainer.model)
    assert "score.weight" in changed(value_before, trainer.value_model)
    assert not changed(reference_before, trainer.ref_model)


def test_value_model_starts_from_the_policy_backbone_with_a_scalar_head(tmp_path):
    model, tokenizer = tiny()
    from_object = load_value_model(model)
    from_path = load_value_model(save_model(model, tokenizer, tmp_path / "policy"))
    for value_model in (from_object, from_path):
        assert value_model.score.out_features == 1
        for name, p in model.base_model.named_parameters():
            torch.testing.assert_close(value_model.base_model.get_parameter(name), p)


def test_values_are_read_at_the_position_that_predicts_each_token():
    model, _ = tiny()
    value_model = load_value_model(model).eval()
    prompt, completion = [5, 6, 7], [8, 9]
    # left-padded prompt, right-padded completion, as the sampler lays them out
    values = completion_values(value_model, torch.tensor([[0] + prompt]), torch.tensor([[0, 1, 1, 1]]),
                               torch.tensor([completion + [0]]), torch.tensor([[1, 1, 0]]))
    plain = value_model(input_ids=torch.tensor([prompt + completion])).logits[0, :, 0]
    # V(s_0) is read after the prompt's last token, V(s_1) after the first completion token
    torch.testing.assert_close(values[0, :2], plain[2:4], atol=1e-5, rtol=1e-4)


def test_reference_model_only_with_a_kl_penalty(tmp_path):
    assert trainer_for(tmp_path, kl_coef=0.05).ref_model is not None
    assert trainer_for(tmp_path, kl_coef=0.0).ref_model is None


def gradients_for(micro_batch_size, tmp_path):
    trainer = trainer_for(tmp_path, seed=1, micro_batch_size=micro_batch_size)
    trainer.generator.manual_seed(0)
    batch = trainer.sample_batch({})
    trainer.optimizer = torch.optim.SGD(trainer.trained_models.parameters(), lr=0.0)
    trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, lambda s: 1.0)
    grads = {}
    hooks = [p.register_post_accumulate_grad_hook(
        lambda p, name=name: grads.__setitem__(name, p.grad.clone()))
        for name, p in trainer.trained_models.named_parameters()]
    stats = trainer.ppo_pass(batch)
    for hook in hooks:
        hook.remove()
    return grads, stats


def test_micro_batch_size_never_changes_the_gradient(tmp_path):
    whole, whole_stats = gradients_for(8, tmp_path)
    split, split_stats = gradients_for(3, tmp_path)
    assert whole.keys() == split.keys() and any(n.startswith("1.score") for n in whole)
    for name in whole:
        torch.testing.assert_close(whole[name], split[name], atol=1e-6, rtol=1e-4)
    for key in ("loss", "value_loss", "policy_loss"):
        assert whole_stats[key] == pytest.approx(split_stats[key], abs=1e-6)


def test_value_updates_on_a_fixed_batch_reduce_the_value_loss(tmp_path):
    trainer = trainer_for(tmp_path, vf_coef=1.0, cliprange_value=100.0, learning_rate=3e-3)
    trainer.build_optimizer()
    batch = trainer.sample_batch({})

    def batch_value_loss():
        values = trainer.rollout_values(batch.rollout)
        return value_loss(values, batch.old_values, batch.returns, batch.mask, 100.0)[0].item()

    before = batch_value_loss()
    for _ in range(20):
        trainer.ppo_pass(batch)
    assert batch_value_loss() < 0.5 * before


def test_config_rejects_bad_values_with_the_key():
    with pytest.raises(ValueError, match="did you mean 'cliprange'"):
        PPOConfig(clip_range=0.2)
    with pytest.raises(ValueError, match="cliprange"):
        PPOConfig(cliprange=1.5)
