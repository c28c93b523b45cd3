"""NaN/Inf losses and gradients: the update is skipped and counted; too many in a row save the
last good state and stop with an error naming the steps. NaNs are injected with hooks on the
model (fault injection); the training path itself runs unchanged."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from grpokit import GRPOConfig, GRPOTrainer
from grpokit.trainers.checkpoints import complete_checkpoints
from grpokit.config import SFTConfig
from grpokit.models import build_char_tokenizer, create_tiny_model
from grpokit.trainers.loop import NonFiniteError
from grpokit.trainers.sft import SFTTrainer

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = dict(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64)
DEMOS = [{"prompt": f"say {i}:", "completion": f" {i}{i}"} for i in range(10)]


class Snapshots:
    """The input embedding after every step."""

    def __init__(self):
        self.weights = {}

    def on_step_end(self, trainer, step, batch, metrics):
        self.weights[step] = trainer.model.get_input_embeddings().weight.detach().clone()


def nan_hidden_states_in(trainer, steps):
    """Training forwards (gradients on) of the given steps return NaN hidden states."""
    def hook(module, inputs, output):
        if torch.is_grad_enabled() and trainer.step_index + 1 in steps:
            return output * math.nan
        return output
    trainer.model.model.norm.register_forward_hook(hook)


def sft(out, callbacks=(), **overrides):
    tokenizer = build_char_tokenizer()
    settings = dict(output_dir=str(out), max_steps=5, learning_rate=1e-2, per_device_train_batch_size=4,
                    max_length=32, lr_scheduler_type="linear")
    return SFTTrainer(model=create_tiny_model(tokenizer, **TINY), args=SFTConfig(**{**settings, **overrides}),
                      train_dataset=DEMOS, processing_class=tokenizer, callbacks=callbacks)


def logged(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_nan_step_makes_no_update_and_is_counted(tmp_path, caplog):
    snapshots = Snapshots()
    trainer = sft(tmp_path / "run", [snapshots])
    nan_hidden_states_in(trainer, {3})
    summary = trainer.train(show_progress=False)

    lines = logged(tmp_path / "run")
    assert [line["nonfinite/skipped_steps"] for line in lines] == [0, 0, 1, 1, 1]
    assert lines[2]["train/loss"] is None and lines[3]["train/loss"] is not None
    assert torch.equal(snapshots.weights[3], snapshots.weights[2])
    assert not torch.equal(snapshots.weights[4], snapshots.weights[3])
    # the schedule did not advance either: step 3 logs step 2's rate, and AdamW took 4 steps
    assert lines[2]["train/learning_rate"] == lines[1]["train/learning_rate"]
    state = trainer.optimizer.state[trainer.optimizer.param_groups[0]["params"][0]]
    assert int(state["step"]) == 4
    assert summary["nonfinite_skipped_steps"] == 1
    assert "sft step 3: loss is nan; the update was skipped" in caplog.text


def test_three_in_a_row_save_the_last_good_state_and_stop_then_resume(tmp_path):
    out, snapshots = tmp_path / "run", Snapshots()
    trainer = sft(out, [snapshots], max_steps=6)
    nan_hidden_states_in(trainer, {2, 3, 4})
    with pytest.raises(NonFiniteError, match="stopped at step 4 after 3 non-finite steps in a row") as error:
        trainer.train(show_progress=False)
    assert "step 2: loss is nan; step 3: loss is nan; step 4: loss is nan" in str(error.value)
    assert "checkpoint-4" in str(error.value)

    saved = load_file(out / "checkpoint-4" / "model.safetensors")["model.embed_tokens.weight"]
    assert torch.equal(saved, snapshots.weights[1])  # the weights after the last good update
    summary = sft(out, max_steps=6).train(show_progress=False, resume_from_checkpoint=True)
    lines = logged(out)
    assert [line["step"] for line in lines] == [1, 2, 3, 4, 5, 6]
    assert [line["nonfinite/skipped_steps"] for line in lines] == [0, 1, 2, 3, 3, 3]
    assert summary["nonfinite_skipped_steps"] == 3


def test_nan_weights_are_never_checkpointed(tmp_path):
    out = tmp_path / "run"
    trainer = sft(out, save_steps=1)

    def poison(module, inputs):  # a fault that corrupts the weights themselves at step 2
        if trainer.step_index + 1 == 2:
            with torch.no_grad():
                module.weight.fill_(math.nan)
    trainer.model.model.norm.register_forward_pre_hook(poison)
    with pytest.raises(NonFiniteError, match="the weights themselves hold NaN/Inf, so nothing was saved; "
                                             "the latest good checkpoint is .*checkpoint-1"):
        trainer.train(show_progress=False)
    assert [p.name for p in complete_checkpoints(out)] == ["checkpoint-1"]


def test_grpo_skips_a_nan_step_with_a_reference_and_two_iterations(tmp_path):
    tokenizer = build_char_tokenizer()
    args = GRPOConfig(output_dir=str(tmp_path / "run"), max_steps=3, prompts_per_step=2, num_generations=4,
                      max_completion_length=8, learning_rate=1e-2, beta=0.1, num_iterations=2)
    snapshots = Snapshots()
    trainer = GRPOTrainer(model=create_tiny_model(tokenizer, **TINY),
                          reward_funcs=[lambda prompts, completions, **kw: [float(len(c)) for c in completions]],
                          args=args, train_dataset=[{"prompt": f"say {i}:"} for i in range(6)],
                          processing_class=tokenizer, callbacks=[snapshots])
    nan_hidden_states_in(trainer, {2})
    trainer.train(show_progress=False)
    lines = logged(tmp_path / "run")
    assert [line["nonfinite/skipped_steps"] for line in lines] == [0, 1, 1]
    assert lines[1]["loss"] is None and lines[2]["loss"] is not None
    assert torch.equal(snapshots.weights[2], snapshots.weights[1])
    assert not torch.equal(snapshots.weights[3], snapshots.weights[2])
