"""Iterative GRPO (DeepSeekMath Algorithm 1): reference resets, step callbacks, replay mixing."""

import json
import random

import pytest
import torch

from grpokit import GRPOConfig, GRPOTrainer
from grpokit.algorithms import ReplayBuffer
from grpokit.models import build_char_tokenizer, create_tiny_model

TINY = dict(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64)
ROWS = [{"prompt": f"say {i}:"} for i in range(20)]


def fraction_of_a(prompts, completions, **kwargs):
    return [c.count("a") / max(len(c), 1) for c in completions]


def trainer_for(tmp_path, callbacks=None, **overrides):
    tokenizer = build_char_tokenizer()
    settings = dict(output_dir=str(tmp_path / "run"), max_steps=3, prompts_per_step=2,
                    num_generations=4, max_completion_length=8, learning_rate=1e-2, beta=0.04)
    return GRPOTrainer(model=create_tiny_model(tokenizer, **TINY), reward_funcs=[fraction_of_a],
                       args=GRPOConfig(**{**settings, **overrides}), train_dataset=ROWS,
                       processing_class=tokenizer, callbacks=callbacks)


def test_reference_is_reset_to_the_policy_every_sync_steps(tmp_path, single_thread):
    trainer = trainer_for(tmp_path, ref_model_sync_steps=2)
    trainer.train(show_progress=False)
    kls = [json.loads(line)["kl"] for line in open(tmp_path / "run" / "metrics.jsonl")]
    # step 1: reference = initial policy; step 2: the policy has moved; after step 2 the
    # reference is reset, so step 3 starts with the policy equal to its reference
    assert kls[0] == pytest.approx(0.0, abs=1e-6)
    assert kls[1] > 1e-5
    assert kls[2] == pytest.approx(0.0, abs=1e-6)


def test_mixup_alpha_moves_the_reference_part_of_the_way(tmp_path):
    trainer = trainer_for(tmp_path, ref_model_sync_steps=1, ref_model_mixup_alpha=0.25)
    before = [p.clone() for p in trainer.ref_model.parameters()]
    with torch.no_grad():
        for param in trainer.model.parameters():
            param.add_(1.0)
    trainer.sync_reference()
    for old, ref, policy in zip(before, trainer.ref_model.parameters(), trainer.model.parameters()):
        torch.testing.assert_close(ref, 0.75 * old + 0.25 * policy)  # = old + 0.25


def test_sync_without_a_reference_copy_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="set beta > 0"):
        trainer_for(tmp_path, ref_model_sync_steps=2, beta=0.0)


class Recorder:
    """A callback that records what it is given and adds a metric."""

    def __init__(self):
        self.calls = []

    def on_step_end(self, trainer, step, batch, metrics):
        self.calls.append((trainer, step, batch.rollout.num_completions, metrics["reward/mean"]))
        metrics["recorder/step"] = float(step)


def test_callbacks_see_every_step_and_can_add_metrics(tmp_path, single_thread):
    recorder = Recorder()
    trainer = trainer_for(tmp_path, callbacks=[recorder, object()], max_steps=2, beta=0.0)
    trainer.train(show_progress=False)
    lines = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [(t is trainer, step, n) for t, step, n, _ in recorder.calls] == [(True, 1, 8), (True, 2, 8)]
    assert [reward for *_, reward in recorder.calls] == [line["reward/mean"] for line in lines]
    assert [line["recorder/step"] for line in lines] == [1.0, 2.0]


# ------------------------------------------------------------------ replay for reward-model training

def two_rounds(history=100, fresh=50):
    buffer = ReplayBuffer()
    buffer.add(range(history))
    buffer.end_round()
    buffer.add(range(1000, 1000 + fresh))
    return buffer


def count(batch):
    replayed = sum(x < 1000 for x in batch)
    return replayed, len(batch) - replayed


@pytest.mark.parametrize("n, fraction, expected", [
    (20, 0.1, (2, 18)),     # DeepSeekMath: 10 % historical
    (40, 0.25, (10, 30)),
    (100, 0.1, (10, 50)),   # only 50 fresh items: all of them, plus the 10 replayed
    (30, 0.0, (0, 30)),
])
def test_replay_mixes_fresh_and_historical_items(n, fraction, expected):
    batch = two_rounds().sample(n, replay_fraction=fraction, rng=random.Random(0))
    assert count(batch) == expected
    assert len(set(batch)) == len(batch)  # drawn without replacement


def test_replay_with_short_or_no_history():
    assert count(two_rounds(history=1).sample(20, rng=random.Random(0))) == (1, 19)
    first_round = ReplayBuffer()
    first_round.add(["a", "b", "c"])
    assert sorted(first_round.sample(10, rng=random.Random(0))) == ["a", "b", "c"]


def test_end_round_moves_fresh_items_into_the_history():
    buffer = two_rounds(history=3, fresh=2)
    buffer.end_round()
    assert buffer.fresh == [] and buffer.history == [0, 1, 2, 1000, 1001]
    assert buffer.sample(5, rng=random.Random(0)) == []  # nothing fresh, 10 % of 5 rounds to 0


def test_replay_is_reproducible_with_a_seeded_rng_and_checks_its_arguments():
    assert two_rounds().sample(20, rng=random.Random(3)) == two_rounds().sample(20, rng=random.Random(3))
    with pytest.raises(ValueError, match="replay_fraction=1.5"):
        two_rounds().sample(5, replay_fraction=1.5)
