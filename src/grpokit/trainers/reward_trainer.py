"""Reward-model training on preference pairs with the Bradley–Terry loss.

Rows are TRL RewardTrainer rows: ``{prompt, chosen, rejected}`` (strings, or a chat prompt with
string or message-list responses), or ``{chosen, rejected}`` alone, each a whole text or a whole
conversation; an optional ``margin`` column is subtracted inside the loss. One step is one
optimizer step on ``per_device_train_batch_size`` pairs: chosen and rejected texts go through
the model in one right-padded batch and the loss is ``bradley_terry_loss`` of their scores.

The model is a local directory of a sequence classifier with one output, or of a causal LM:
then ``AutoModelForSequenceClassification`` keeps its body and puts a new one-output score
head on top (DeepSeekMath initialises its reward model from the base model, DeepSeekMath §4.2).
Checkpoints, exact resume, skipped non-finite updates, ``request_stop`` and ``rollback`` come
from ``grpokit.trainers.loop.TrainingLoop``.
"""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import (AutoConfig, AutoModelForSequenceClassification, PreTrainedModel,
                          PreTrainedTokenizerBase, set_seed)

from grpokit.algorithms.preference import bradley_terry_loss, pair_accuracy
from grpokit.config import RewardModelConfig, write_resolved
from grpokit.data import load_rows
from grpokit.data.rows import check_rows_container, check_prompt_value, row_location
from grpokit.errors import DatasetError
from grpokit.models import ModelLoadError, load_pretrained, load_tokenizer, pick_device, save_model
from grpokit.rewards.reward_model import (encode, ensure_pad_token, is_sequence_classifier, right_pad,
                                          scored_text, sequence_scores)
from grpokit.data import shuffled_batches
from grpokit.models.for_training import final_model
from grpokit.models.transformers_compat import enable_activation_checkpointing
from grpokit.monitoring.summary import write_summary
from grpokit.trainers.loop import TrainingLoop
from grpokit.trainers.optim import build_optimizer, clip_and_step

Pair = tuple[list[int], list[int], float]  # chosen ids, rejected ids, margin


# ------------------------------------------------------------------------------ the rows


def validate_preference_rows(rows: list[dict], source_name: str = "dataset") -> list[dict]:
    """Check preference rows; return ``{"prompt" (None when absent), "chosen", "rejected", "margin"}``.

    >>> validate_preference_rows([{"prompt": "2+2=", "chosen": "4", "rejected": "5"}])
    [{'prompt': '2+2=', 'chosen': '4', 'rejected': '5', 'margin': 0.0}]
    >>> validate_preference_rows([{"prompt": "2+2=", "chosen": "4"}])
    Traceback (most recent call last):
    ...
    grpokit.errors.DatasetError: dataset row 0: no 'rejected' column (found columns: prompt, chosen); expected a string or a list of chat messages
    """
    check_rows_container(rows, source_name)
    return [_normalize_preference_row(row, row_location(rows, i, source_name)) for i, row in enumerate(rows)]


def _normalize_preference_row(row: dict, where: str) -> dict:
    keys = ("prompt", "chosen", "rejected") if row.get("prompt") is not None else ("chosen", "rejected")
    for key in keys:
        check_prompt_value(row, key, where)
    prompt, chosen, rejected = row.get("prompt"), row["chosen"], row["rejected"]
    if isinstance(chosen, str) != isinstance(rejected, str):
        raise DatasetError(f"{where}: 'chosen' and 'rejected' differ in format; use two strings or "
                           f"two message lists")
    if isinstance(prompt, str) and not isinstance(chosen, str):
        raise DatasetError(f"{where}: 'prompt' is a string but 'chosen' is a message list; use "
                           f"string responses, or a chat prompt (a message list)")
    margin = row.get("margin", 0.0)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin):
        raise DatasetError(f"{where}: 'margin' is {margin!r}; expected a finite number")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "margin": float(margin)}


def encode_pair(row: dict, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Pair:
    """Token ids of prompt + chosen and prompt + rejected (as the scorer reads them), and the margin."""
    chosen, rejected = (encode(scored_text(row["prompt"], row[key], tokenizer), tokenizer, max_length)
                        for key in ("chosen", "rejected"))
    return chosen, rejected, row["margin"]


def split_held_out(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held-out): a seeded shuffle, ``round(fraction * n)`` rows held out, at least one kept.

    >>> train, held_out = split_held_out([{"i": i} for i in range(10)], 0.2, seed=0)
    >>> len(train), len(held_out), sorted(r["i"] for r in train + held_out) == list(range(10))
    (8, 2, True)
    """
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    count = min(round(fraction * len(rows)), len(rows) - 1)
    return [rows[i] for i in order[count:]], [rows[i] for i in order[:count]]


# ----------------------------------------------------------------------------- the model


def load_preference_model(path: str | Path, device: torch.device) -> PreTrainedModel:
    """A one-output sequence classifier from a reward-model or causal-LM directory."""
    config = load_pretrained(AutoConfig, path, "model's config")
    if is_sequence_classifier(config.architectures) and config.num_labels != 1:
        raise ModelLoadError(f"model path {str(path)!r} holds a {config.architectures[0]} with "
                             f"num_labels={config.num_labels}; a reward model has num_labels=1")
    model = load_pretrained(AutoModelForSequenceClassification, path, "reward model (a sequence "
                            "classifier with one output)", num_labels=1, dtype=torch.float32)
    return model.to(device)


def resolve_preference_model(
    model: str | Path | PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None,
    args: RewardModelConfig, peft_config: LoraConfig | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, torch.device]:
    """Model, tokenizer (from ``tokenizer`` or the directory) and device, with LoRA when asked."""
    device = pick_device(args.device)
    if isinstance(model, (str, Path)):
        tokenizer = tokenizer or load_tokenizer(model)
        model = load_preference_model(model, device)
    elif tokenizer is None:
        raise ValueError("a model object was given without processing_class: pass its tokenizer")
    elif getattr(model.config, "num_labels", None) != 1:
        raise ValueError(f"the model object is a {type(model).__name__} with num_labels="
                         f"{getattr(model.config, 'num_labels', None)}; expected a sequence "
                         f"classifier with num_labels=1 (or pass a model directory)")
    else:
        model = model.to(device)
    ensure_pad_token(model, tokenizer)
    if args.gradient_checkpointing:
        enable_activation_checkpointing(model)
    if peft_config is not None or args.use_lora:
        model = get_peft_model(model, peft_config or LoraConfig(
            r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
            target_modules=args.lora_target_modules, task_type="SEQ_CLS"))  # SEQ_CLS trains the head too
    return model, tokenizer, device


# --------------------------------------------------------------------------- the trainer


class RewardModelTrainer(TrainingLoop):
    """Train a reward model on preference pairs (TRL ``RewardTrainer`` rows) with Bradley–Terry.

    ``model`` is a local directory (a causal LM or a one-output sequence classifier) or a loaded
    sequence classifier (then pass its tokenizer as ``processing_class``). Datasets are anything
    ``load_rows`` reads. Without ``eval_dataset``, ``args.eval_fraction`` of the training pairs
    are held out. ``callbacks`` get ``on_step_end(trainer, step, pairs, metrics)`` as in
    ``GRPOTrainer``.
    """

    stage = "rm"
    distributable = False

    def __init__(self, model, args: RewardModelConfig, train_dataset, eval_dataset=None,
                 processing_class=None, peft_config=None, callbacks=None):
        self.args = args
        rows = validate_preference_rows(load_rows(train_dataset), "train_dataset")
        if eval_dataset is not None:
            held_out = validate_preference_rows(load_rows(eval_dataset), "eval_dataset")
        else:
            rows, held_out = split_held_out(rows, args.eval_fraction, args.seed)
        self.model, self.tokenizer, self.device = resolve_preference_model(model, processing_class, args,
                                                                           peft_config)
        self.pad_id = self.model.config.pad_token_id
        self.train_pairs = [encode_pair(r, self.tokenizer, args.max_length) for r in rows]
        self.eval_pairs = [encode_pair(r, self.tokenizer, args.max_length) for r in held_out]
        self.eval_before: dict[str, float] | None = None
        self.init_loop(callbacks)
        self.start_batches()

    def start_batches(self) -> None:
        """Shuffled pair batches from the current step on (a step takes one batch, so the step is
        the data position)."""
        batches = shuffled_batches(self.train_pairs, self.args.per_device_train_batch_size, self.args.seed)
        self.batches = itertools.islice(batches, self.step_index, None)

    def trainer_state(self) -> dict:
        return {"eval_before": self.eval_before}

    def load_trainer_state(self, state: dict) -> None:
        self.eval_before = state["eval_before"]
        self.start_batches()

    def autocast(self):
        """bfloat16 autocast when ``args.bf16``; otherwise a no-op context."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.args.bf16)

    def pair_scores(self, pairs: list[Pair]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) chosen and (B,) rejected scores from one forward pass over the 2B sequences."""
        batch = right_pad([p[0] for p in pairs] + [p[1] for p in pairs], self.pad_id)
        with self.autocast():
            scores = sequence_scores(self.model, {k: v.to(self.device) for k, v in batch.items()})  # (2B,)
        return scores[: len(pairs)], scores[len(pairs):]

    @torch.no_grad()
    def evaluate(self) -> dict[str, float] | None:
        """Held-out pair accuracy, mean margin and score mean/std; None without held-out pairs."""
        if not self.eval_pairs:
            return None
        self.model.eval()
        size = self.args.per_device_train_batch_size
        scored = [self.pair_scores(self.eval_pairs[i : i + size]) for i in range(0, len(self.eval_pairs), size)]
        self.model.train()
        chosen, rejected = torch.cat([c for c, _ in scored]), torch.cat([r for _, r in scored])
        both = torch.cat([chosen, rejected])
        return {"accuracy": pair_accuracy(chosen, rejected), "margin": float((chosen - rejected).mean()),
                "score_mean": float(both.mean()), "score_std": float(both.std()) if len(both) > 1 else math.nan}

    def step(self) -> dict[str, float]:
        """One optimizer step on the next batch of pairs."""
        pairs = next(self.batches)
        chosen, rejected = self.pair_scores(pairs)
        margins = torch.tensor([p[2] for p in pairs], device=self.device)
        objective = bradley_terry_loss(chosen, rejected, margins)
        objective.backward()
        loss = objective.item()
        grad_norm, problem = clip_and_step(self.model, self.optimizer, self.scheduler,
                                           self.args.max_grad_norm, loss)
        self.step_index += 1
        metrics = {"train/loss": loss, "train/accuracy": pair_accuracy(chosen.detach(), rejected.detach()),
                   "train/margin": float((chosen - rejected).detach().mean()),
                   "train/grad_norm": grad_norm, "train/learning_rate": self.scheduler.get_last_lr()[0]}
        return self.end_step(pairs, metrics, problem)

    def status(self, metrics: dict[str, float]) -> str:
        return f"loss {metrics['train/loss']:.3f} acc {metrics['train/accuracy']:.2f}"

    def train(self, show_progress: bool = True, resume_from_checkpoint: bool | str | None = None) -> dict:
        """Train for ``max_steps``; ``resume_from_checkpoint`` (True: the latest checkpoint in
        ``output_dir``, or a checkpoint path) continues an interrupted run exactly."""
        args, out = self.args, Path(self.args.output_dir)
        write_resolved(args, out)
        set_seed(args.seed)  # python, numpy and torch
        if not resume_from_checkpoint:  # a resumed run takes it from the checkpoint
            self.eval_before = self.evaluate()
        self.optimizer, self.scheduler = build_optimizer(self.model, args, args.max_steps)
        self.model.train()
        seconds = self.run_loop("Reward model", show_progress, resume_from_checkpoint)
        after = self.evaluate()
        self.model = final_model(self.model)
        save_model(self.model, self.tokenizer, out / "model")
        summary = {"stage": "rm", "steps": self.step_index,
                   "final_loss": self.history[-1]["train/loss"] if self.history else math.nan,
                   "train_pairs": len(self.train_pairs), "eval_pairs": len(self.eval_pairs),
                   "eval_before": self.eval_before, "eval_after": after,
                   "seconds": seconds, "model_dir": str(out / "model"), **self.loop_summary()}
        write_summary(out, summary)
        return summary


def run_reward_model(cfg_section: RewardModelConfig, model_dir: str | Path, rows: Any,
                     show_progress: bool = True, resume_from_checkpoint: bool | str | None = None) -> Path:
    """Train a reward model from ``model_dir`` on preference ``rows``; returns the saved model's directory."""
    trainer = RewardModelTrainer(model=str(model_dir), args=cfg_section, train_dataset=rows)
    return Path(trainer.train(show_progress, resume_from_checkpoint)["model_dir"])
