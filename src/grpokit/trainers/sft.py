"""Supervised fine-tuning on demonstrations, with the loss on completion tokens only.

One step is one optimizer step on ``per_device_train_batch_size`` demonstrations per process;
the loss is the mean negative log-likelihood over the batch's completion tokens (prompt and
padding carry label -100). Under torchrun the global batch is the per-device size times the
number of processes, each process takes its share, and the mean is over the global batch's
tokens. Checkpoints, exact resume, skipped non-finite updates, ``request_stop`` and
``rollback`` come from ``grpokit.trainers.loop.TrainingLoop``.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, set_seed

from grpokit.config import SFTConfig
from grpokit.parallel.ranks import sum_across
from grpokit.data import load_rows, render_prompt, validate_sft_rows
from grpokit.errors import DatasetError
from grpokit.agents.episodes import EnvironmentTokens
from grpokit.agents.tools import tool_schema
from grpokit.imports import import_object
from grpokit.data import shuffled_batches
from grpokit.models.for_training import resolve_model
from grpokit.trainers.loop import TrainingLoop
from grpokit.trainers.optim import build_optimizer, clip_and_step


def encode_demonstration(
    prompt: str, completion: str, tokenizer: PreTrainedTokenizerBase, max_length: int
) -> tuple[list[int], list[int]]:
    """Token ids and labels (-100 on the prompt) of ``prompt + completion + EOS``."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    completion_ids = completion_ids + [tokenizer.eos_token_id]
    ids = (prompt_ids + completion_ids)[:max_length]
    labels = ([-100] * len(prompt_ids) + completion_ids)[:max_length]
    return ids, labels


def encode_conversation(prompt: str, completion: list[dict], tokenizer: PreTrainedTokenizerBase,
                        max_length: int, environment_tokens=None) -> tuple[list[int], list[int]]:
    """Token ids and labels of a chat demonstration whose completion may hold several turns
    (assistant, tool, assistant, ...): labels on the assistant turns (each ended by EOS), the
    other messages rendered as a multi-turn episode renders them (``EnvironmentTokens``), so
    the model learns the very token layout it samples in."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    labels, pending = [-100] * len(ids), []
    for message in completion:
        if message["role"] != "assistant":
            pending.append(message)
            continue
        if pending:
            environment = (environment_tokens or EnvironmentTokens(tokenizer))(pending)
            ids, labels, pending = ids + environment, labels + [-100] * len(environment), []
        turn = tokenizer(message["content"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids, labels = ids + turn, labels + turn
    return ids[:max_length], labels[:max_length]


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch of ``(ids, labels)`` into model inputs.

    >>> batch = collate([([5, 6, 7], [-100, 6, 7]), ([8], [8])], pad_id=0)
    >>> batch["input_ids"].tolist(), batch["labels"].tolist()
    ([[5, 6, 7], [8, 0, 0]], [[-100, 6, 7], [8, -100, -100]])
    """
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def completion_nll(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed negative log-likelihood of the batch's labelled (completion) tokens, and their count."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]  # (B, T-1)
    total = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="sum"
    )
    return total, int((targets != -100).sum())


class SFTTrainer(TrainingLoop):
    """Fine-tune a causal LM on ``{prompt, completion}`` (or ``messages``) rows; a chat
    completion may hold several turns with tool messages between them (``tools`` and
    ``args.tools`` are shown in the prompts, as in the GRPO stage that follows).

    ``model`` is a local model directory or a loaded ``PreTrainedModel`` (then pass the
    tokenizer as ``processing_class``); ``train_dataset`` is anything ``load_rows`` reads.
    ``callbacks`` get ``on_step_end(trainer, step, batch, metrics)`` as in ``GRPOTrainer``.
    """

    stage = "sft"

    def __init__(self, model, args: SFTConfig, train_dataset, processing_class=None,
                 peft_config=None, callbacks=None, tools=()):
        self.args = args
        source = str(train_dataset) if isinstance(train_dataset, (str, Path)) else "train_dataset"
        rows = validate_sft_rows(load_rows(train_dataset), source)
        self.model, self.tokenizer, self.device = resolve_model(model, processing_class, args,
                                                                peft_config)
        functions = [*tools, *(import_object(t, f"sft.tools[{i}]") for i, t in enumerate(args.tools))]
        schemas = [tool_schema(fn) for fn in functions] or None
        environment_tokens = EnvironmentTokens(self.tokenizer) if any(len(r["completion"]) > 1 for r in rows
                                                                      if isinstance(r["completion"], list)) else None
        self.examples = [
            encode_conversation(render_prompt(r["prompt"], self.tokenizer, schemas), r["completion"], self.tokenizer,
                                args.max_length, environment_tokens)
            if isinstance(r["completion"], list) else
            encode_demonstration(render_prompt(r["prompt"], self.tokenizer), r["completion"], self.tokenizer,
                                 args.max_length)
            for r in rows
        ]

        self.init_loop(callbacks)
        if len(self.examples) < self.ranks.world_size:
            raise DatasetError(f"train_dataset has {len(self.examples)} rows, fewer than the "
                             f"{self.ranks.world_size} processes training on it")
        self.start_batches()

    def start_batches(self) -> None:
        """Shuffled batches from the current step on (a step takes one batch, so the step is the
        data position)."""
        size = self.args.per_device_train_batch_size * self.ranks.world_size
        batches = shuffled_batches(self.examples, size, self.args.seed)
        self.batches = itertools.islice(batches, self.step_index, None)

    def load_trainer_state(self, state: dict) -> None:
        self.start_batches()

    def step(self) -> dict[str, float]:
        """One optimizer step on the next batch of demonstrations."""
        examples = next(self.batches)  # a data set smaller than a batch gives all its rows:
        examples = self.ranks.shard(examples[: len(examples) - len(examples) % self.ranks.world_size])
        batch = {k: v.to(self.device) for k, v in collate(examples, self.tokenizer.pad_token_id).items()}
        with self.engine.micro_batch(last=True):
            nll, tokens = self.engine.forward(completion_nll, batch)
            tokens = sum_across({"tokens": tokens})["tokens"]  # the global batch's
            nll = nll / max(tokens, 1.0)  # this rank's share of the mean
            (nll * self.ranks.grad_scale).backward()
        loss = sum_across({"loss": nll.item()})["loss"]
        grad_norm, problem = clip_and_step(self.model, self.optimizer, self.scheduler,
                                           self.args.max_grad_norm, loss)
        self.step_index += 1
        metrics = {"train/loss": loss, "train/grad_norm": grad_norm,
                   "train/learning_rate": self.scheduler.get_last_lr()[0]}
        return self.end_step(batch, metrics, problem)

    def status(self, metrics: dict[str, float]) -> str:
        return f"loss {metrics['train/loss']:.3f}"

    def train(self, show_progress: bool = True, resume_from_checkpoint: bool | str | None = None) -> dict:
        """Train for ``max_steps``; ``resume_from_checkpoint`` (True: the latest checkpoint in
        ``output_dir``, or a checkpoint path) continues an interrupted run exactly."""
        args = self.args
        self.write_run_files()
        set_seed(args.seed)  # python, numpy and torch
        self.optimizer, self.scheduler = build_optimizer(self.model, args, args.max_steps)
        self.model.train()
        seconds = self.run_loop("SFT", show_progress, resume_from_checkpoint)
        model_dir = self.save_final_model(self.output_dir / "model")
        summary = {"stage": "sft", "steps": self.step_index,
                   "final_loss": self.history[-1]["train/loss"] if self.history else math.nan,
                   "seconds": seconds, "model_dir": str(model_dir), **self.loop_summary()}
        self.write_run_files(summary)
        return summary
