"""DAPO's dynamic sampling inside GRPOTrainer: with refill every trained group has varied rewards
and the batch is full; with drop the zero-advantage groups leave the batch."""

import json

import pytest

from grpokit import GRPOConfig, GRPOTrainer
from grpokit.models import build_char_tokenizer, create_tiny_model

TINY = dict(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64)
ROWS = [{"prompt": f"say {i}:", "constant": i % 2 == 1} for i in range(16)]


def a_count_unless_constant(prompts, completions, constant, **kwargs):
    """Half of the prompts give every completion 0: their groups carry no signal."""
    return [0.0 if flat else float(c.count("a") + len(c) % 3) for c, flat in zip(completions, constant)]


class Batches:
    def __init__(self):
        self.seen = []

    def on_step_end(self, trainer, step, batch, metrics):
        groups = batch.rewards.total.view(-1, batch.rollout.group_size)
        self.seen.append(((groups.max(1).values > groups.min(1).values).tolist(), dict(metrics)))


def train(tmp_path, **overrides):
    tokenizer = build_char_tokenizer()
    args = GRPOConfig(output_dir=str(tmp_path / "run"), max_steps=3, prompts_per_step=4, num_generations=4,
                      max_completion_length=8, seed=3, **overrides)
    batches = Batches()
    GRPOTrainer(create_tiny_model(tokenizer, **TINY), [a_count_unless_constant], args=args, train_dataset=ROWS,
                processing_class=tokenizer, callbacks=[batches]).train(show_progress=False)
    return batches.seen


def test_refill_trains_only_groups_with_signal_and_keeps_the_batch_full(tmp_path):
    seen = train(tmp_path, dynamic_sampling="refill", max_sampling_rounds=4)
    for varied, metrics in seen:
        assert varied == [True] * 4  # a full batch of P groups, each with differing rewards
        assert metrics["sampling/groups_kept"] == 4 and metrics["sampling/prompts_drawn"] >= 8
        assert metrics["sampling/rounds"] >= 2 and metrics["reward/frac_zero_std"] == 0.0
    lines = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [line["sampling/rounds"] for line in lines] == [m["sampling/rounds"] for _, m in seen]


def test_refill_stops_after_max_sampling_rounds_with_what_it_has(tmp_path):
    seen = train(tmp_path, dynamic_sampling="refill", max_sampling_rounds=1)
    for varied, metrics in seen:
        assert all(varied) and metrics["sampling/rounds"] == 1
        assert metrics["sampling/groups_kept"] == len(varied) <= 4
    assert any(len(varied) < 4 for varied, _ in seen)  # the constant groups drawn were dropped


def test_drop_removes_zero_advantage_groups_without_sampling_more(tmp_path):
    seen = train(tmp_path, dynamic_sampling="drop")
    for varied, metrics in seen:
        assert all(varied) and metrics["sampling/prompts_drawn"] == 4 and metrics["sampling/rounds"] == 1


def test_off_keeps_every_group(tmp_path):
    seen = train(tmp_path)
    assert any(not all(varied) for varied, _ in seen)
    assert all(len(varied) == 4 for varied, _ in seen)


@pytest.mark.parametrize("mode", ["refill", "drop"])
def test_dynamic_sampling_modes_are_config_values(mode):
    assert GRPOConfig(dynamic_sampling=mode).dynamic_sampling == mode
