"""Exact resume: a run that crashes after a checkpoint and is resumed by fresh trainer objects
reproduces the uninterrupted run (metrics.jsonl line for line, final weights bit for bit); the
control API (request_stop, rollback) that alert callbacks use."""

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from grpokit import GRPOConfig, GRPOTrainer
from grpokit.trainers.checkpoints import CheckpointError
from grpokit.config import PPOConfig, RewardModelConfig, SFTConfig
from grpokit.models import build_char_tokenizer, create_tiny_model
from grpokit.trainers.ppo import PPOTrainer
from grpokit.trainers.reward_trainer import RewardModelTrainer
from grpokit.trainers.sft import SFTTrainer

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = dict(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64)
PROMPTS = [{"prompt": f"say {i}:"} for i in range(10)]
DEMOS = [{"prompt": f"say {i}:", "completion": f" {i}{i}"} for i in range(10)]
PAIRS = [{"prompt": f"{i}+{i}=", "chosen": str(2 * i), "rejected": str(2 * i + 1)} for i in range(12)]


class Crash(Exception):
    pass


class CrashDuring:
    """Fault injection: raise at the end of a step, before it is logged, as a crash would."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, trainer, step, batch, metrics):
        if step == self.step:
            raise Crash(f"crash in step {step}")


def fraction_of_a(prompts, completions, **kwargs):
    return [c.count("a") / max(len(c), 1) for c in completions]


def jitter(prompts, completions, **kwargs):
    """Draws from python's and numpy's global RNGs, which a checkpoint must restore."""
    return [0.01 * random.random() + 0.01 * float(np.random.rand()) for _ in completions]


def grpo(out, callbacks=(), **overrides):
    tokenizer = build_char_tokenizer()
    settings = dict(output_dir=str(out), max_steps=6, save_steps=3, prompts_per_step=2,
                    num_generations=4, max_completion_length=8, learning_rate=1e-2, beta=0.1,
                    num_iterations=2, lr_scheduler_type="linear", warmup_steps=2, seed=3)
    return GRPOTrainer(model=create_tiny_model(tokenizer, **TINY), reward_funcs=[fraction_of_a, jitter],
                       args=GRPOConfig(**{**settings, **overrides}), train_dataset=PROMPTS,
                       processing_class=tokenizer, callbacks=callbacks)


def grpo_async(out, callbacks=()):
    """Asynchronous rollouts: the checkpoint keeps the batches sampled ahead of it."""
    return grpo(out, callbacks, rollout={"max_staleness": 2})


def sft(out, callbacks=()):
    """With LoRA dropout, so the torch RNG and the adapter checkpoint matter."""
    tokenizer = build_char_tokenizer()
    args = SFTConfig(output_dir=str(out), max_steps=6, save_steps=3, learning_rate=1e-2,
                     per_device_train_batch_size=4, max_length=32, use_lora=True, lora_r=4,
                     lora_dropout=0.2)
    return SFTTrainer(model=create_tiny_model(tokenizer, **TINY), args=args, train_dataset=DEMOS,
                      processing_class=tokenizer, callbacks=callbacks)


def ppo(out, callbacks=()):
    tokenizer = build_char_tokenizer()
    args = PPOConfig(output_dir=str(out), max_steps=6, save_steps=3, prompts_per_step=4,
                     num_ppo_epochs=2, max_completion_length=8, learning_rate=1e-2, kl_coef=0.1)
    return PPOTrainer(model=create_tiny_model(tokenizer, **TINY), reward_funcs=[fraction_of_a, jitter],
                      args=args, train_dataset=PROMPTS, processing_class=tokenizer, callbacks=callbacks)


def reward_model(out, callbacks=()):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tokenizer = build_char_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), num_labels=1, pad_token_id=tokenizer.pad_token_id,
                         hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=64)
    args = RewardModelConfig(output_dir=str(out), max_steps=6, save_steps=3, learning_rate=1e-2,
                             per_device_train_batch_size=4, max_length=32, eval_fraction=0.25)
    return RewardModelTrainer(model=LlamaForSequenceClassification(config), args=args, train_dataset=PAIRS,
                              processing_class=tokenizer, callbacks=callbacks)


def logged(out):
    """metrics.jsonl without wall-clock values."""
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if not k.startswith("time/") and not k.endswith("_per_s")}
            for line in lines]


def final_weights(out):
    return load_file(out / "model" / "model.safetensors")


@pytest.mark.parametrize("make", [grpo, grpo_async, sft, ppo, reward_model])
def test_crash_and_resume_reproduce_the_uninterrupted_run_exactly(tmp_path, make):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    expected = make(straight).train(show_progress=False)

    with pytest.raises(Crash):
        make(resumed, [CrashDuring(6)]).train(show_progress=False)
    assert [line["step"] for line in logged(resumed)] == [1, 2, 3, 4, 5]
    random.seed(99), np.random.seed(99), torch.manual_seed(99)  # a different process, in effect
    summary = make(resumed).train(show_progress=False, resume_from_checkpoint=True)

    assert logged(resumed) == logged(straight)  # lines 1-3 kept, 4-6 recomputed
    assert summary["steps"] == expected["steps"] == 6
    ours, theirs = final_weights(resumed), final_weights(straight)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    if make is reward_model:
        assert summary["eval_before"] == expected["eval_before"]


def test_resume_from_a_named_checkpoint_and_errors_without_one(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(CheckpointError, match="holds no complete checkpoint"):
        grpo(out, max_steps=2).train(show_progress=False, resume_from_checkpoint=True)
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        grpo(out, max_steps=2).train(show_progress=False, resume_from_checkpoint=tmp_path / "nowhere")
    grpo(out, max_steps=4, save_steps=2).train(show_progress=False)
    grpo(out, max_steps=4, save_steps=2).train(show_progress=False, resume_from_checkpoint=out / "checkpoint-2")
    assert [line["step"] for line in logged(out)] == [1, 2, 3, 4]


class StopAt:
    def __init__(self, step):
        self.step = step

    def on_step_end(self, trainer, step, batch, metrics):
        if step == self.step:
            trainer.request_stop("kl above 0.5")


def test_request_stop_ends_after_the_step_with_a_checkpoint_and_a_reason(tmp_path):
    out = tmp_path / "run"
    summary = grpo(out, [StopAt(2)], save_steps=0).train(show_progress=False)
    assert summary["stopped_early"] == "kl above 0.5" and summary["steps"] == 2
    assert json.loads((out / "summary.json").read_text())["stopped_early"] == "kl above 0.5"
    assert (out / "checkpoint-2" / "COMPLETE").is_file() and (out / "model" / "config.json").is_file()
    resumed = grpo(out, save_steps=0).train(show_progress=False, resume_from_checkpoint=True)
    assert resumed["steps"] == 6 and "stopped_early" not in resumed


class RollbackOnce:
    """Roll back at ``step`` once; record what each step sampled."""

    def __init__(self, step, factor):
        self.step, self.factor, self.sampled, self.returned = step, factor, [], None

    def on_step_end(self, trainer, step, batch, metrics):
        self.sampled.append((step, batch.rollout.completion_ids.clone()))
        if step == self.step and self.returned is None:
            self.returned = trainer.rollback(self.factor)


def test_rollback_reloads_the_checkpoint_and_scales_the_learning_rate(tmp_path):
    plain = grpo(tmp_path / "plain", lr_scheduler_type="constant", save_steps=2, max_steps=5)
    plain.train(show_progress=False)
    rollback = RollbackOnce(step=3, factor=0.5)
    trainer = grpo(tmp_path / "rolled", [rollback], lr_scheduler_type="constant", save_steps=2, max_steps=5)
    summary = trainer.train(show_progress=False)

    assert rollback.returned == 2
    assert [s for s, _ in rollback.sampled] == [1, 2, 3, 3, 4, 5]
    assert torch.equal(rollback.sampled[2][1], rollback.sampled[3][1])  # RNG and data restored
    lines, before = logged(tmp_path / "rolled"), logged(tmp_path / "plain")
    assert [line["step"] for line in lines] == [1, 2, 3, 4, 5]
    assert lines[:2] == before[:2]
    assert [line["learning_rate"] for line in lines[2:]] == [0.005] * 3
    assert summary["rollbacks"] == [{"step": 3, "to_step": 2, "lr_factor": 0.5}]
    assert trainer.optimizer.param_groups[0]["lr"] == 0.005


def test_rollback_without_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no complete checkpoint to roll back to; set save_steps"):
        grpo(tmp_path / "run", [RollbackOnce(step=1, factor=0.5)], save_steps=0).train(show_progress=False)
    with pytest.raises(RuntimeError, match="while train\\(\\) runs"):
        grpo(tmp_path / "idle").rollback(0.5)


def test_pipeline_resume_continues_a_failed_stage_from_its_checkpoint(tmp_path, monkeypatch):
    from grpokit.config import RunConfig, validate
    from grpokit.recipes.pipeline import run_pipeline

    out = tmp_path / "pipeline"
    cfg = validate(RunConfig, {
        "data": {"task": "digit_sum", "num_train": 32, "num_test": 4},
        "sft": {"max_steps": 4, "save_steps": 2, "per_device_train_batch_size": 4, "max_length": 64},
        "pipeline": {"output_dir": str(out), "stages": [{"name": "sft", "type": "sft", "evaluate": False}]},
    }, "test")
    real_step = SFTTrainer.step

    def crash_in_step_3(trainer):
        if trainer.step_index == 2:
            raise Crash("crash in step 3")
        return real_step(trainer)

    monkeypatch.setattr(SFTTrainer, "step", crash_in_step_3)
    with pytest.raises(Crash):
        run_pipeline(cfg, show_progress=False, announce=lambda line: None)
    monkeypatch.undo()
    lines = []
    run_pipeline(cfg, show_progress=False, announce=lines.append, resume=True)
    assert lines == ["stage 1/1 sft (sft): resuming from checkpoint-2"]
    assert [line["step"] for line in logged(out / "sft")] == [1, 2, 3, 4]
    assert json.loads((out / "sft" / "summary.json").read_text())["steps"] == 4


def monitored(out, crash_step=None):
    """GRPO with alerts that fire every step, the completions log every step and TensorBoard."""
    from grpokit.config import MonitorConfig
    from grpokit.monitoring.callbacks import monitor_callbacks

    monitor = MonitorConfig(log_completions_steps=1, log_completions_count=2,
                            alerts={"cooldown_steps": 0, "truncation": {"max_rate": 0.0}})
    callbacks = ([CrashDuring(crash_step)] if crash_step else []) + monitor_callbacks(monitor)
    return grpo(out, callbacks, monitor=monitor, report_to=["tensorboard"])


def run_file(out, name):
    return (out / name).read_text().splitlines()


def test_a_resumed_run_writes_every_run_file_as_an_uninterrupted_one(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    monitored(straight).train(show_progress=False)
    with pytest.raises(Crash):  # after steps 4 and 5 wrote alerts and completions past checkpoint-3
        monitored(resumed, crash_step=6).train(show_progress=False)
    assert [json.loads(line)["step"] for line in run_file(resumed, "alerts.jsonl")] == [1, 2, 3, 4, 5]
    monitored(resumed).train(show_progress=False, resume_from_checkpoint=True)

    assert [json.loads(line)["step"] for line in run_file(resumed, "alerts.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert run_file(resumed, "alerts.jsonl") == run_file(straight, "alerts.jsonl")
    assert run_file(resumed, "completions.jsonl") == run_file(straight, "completions.jsonl")
    assert logged(resumed) == logged(straight)
    events = EventAccumulator(str(resumed / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("reward/mean")] == [1, 2, 3, 4, 5, 6]  # purged, not doubled


@pytest.fixture
def sigint_as_in_a_terminal():
    """SIGINT handled as in a terminal (a CI job started in the background ignores it)."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_sigint_saves_a_checkpoint_at_the_step_boundary_and_resume_finishes_the_run(tmp_path,
                                                                                    sigint_as_in_a_terminal):
    import signal

    from grpokit.errors import TrainingInterrupted

    class CtrlC:
        def on_step_end(self, trainer, step, batch, metrics):
            if step == 4:
                signal.raise_signal(signal.SIGINT)  # as a terminal's Ctrl-C during step 4

    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    grpo(straight).train(show_progress=False)
    with pytest.raises(TrainingInterrupted) as stop:
        grpo(stopped, [CtrlC()]).train(show_progress=False)
    assert (stop.value.step, stop.value.signal_name) == (4, "SIGINT")
    assert stop.value.checkpoint == stopped / "checkpoint-4" and (stopped / "checkpoint-4" / "COMPLETE").is_file()
    assert [line["step"] for line in logged(stopped)] == [1, 2, 3, 4]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers put back
    grpo(stopped).train(show_progress=False, resume_from_checkpoint=True)
    assert logged(stopped) == logged(straight)
    ours, theirs = final_weights(stopped), final_weights(straight)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
