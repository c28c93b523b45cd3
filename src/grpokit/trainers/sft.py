"""Supervised fine-tuning on demonstrations, with the loss on completion tokens only.

One step is one optimizer step on ``per_device_train_batch_size`` demonstrations; the loss is
the mean negative log-likelihood over the batch's completion tokens (prompt and padding carry
label -100).
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from grpokit.config import SFTConfig, write_resolved
from grpokit.data import load_rows, render_prompt, validate_sft_rows
from grpokit.rewards.rules import completion_text
from grpokit.monitoring import MetricsWriter, progress_bar
from grpokit.models import save_model
from grpokit.trainers.common import final_model, resolve_model, write_summary
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


def completion_nll(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean negative log-likelihood over the batch's labelled (completion) tokens."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]  # (B, T-1)
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=-100
    )


class SFTTrainer:
    """Fine-tune a causal LM on ``{prompt, completion}`` (or ``messages``) rows.

    ``model`` is a local model directory or a loaded ``PreTrainedModel`` (then pass the
    tokenizer as ``processing_class``); ``train_dataset`` is anything ``load_rows`` reads.
    """

    def __init__(self, model, args: SFTConfig, train_dataset, processing_class=None,
                 peft_config=None):
        self.args = args
        rows = validate_sft_rows(load_rows(train_dataset), "train_dataset")
        self.model, self.tokenizer, self.device = resolve_model(model, processing_class, args,
                                                                peft_config)
        self.examples = [
            encode_demonstration(render_prompt(r["prompt"], self.tokenizer),
                                 completion_text(r["completion"]),
                                 self.tokenizer, args.max_length)
            for r in rows
        ]

    def batches(self):
        """Endless shuffled batches (a new permutation each epoch)."""
        rng, size = random.Random(self.args.seed), self.args.per_device_train_batch_size
        while True:
            order = list(range(len(self.examples)))
            rng.shuffle(order)
            for start in range(0, max(len(order) - size, 0) + 1, size):
                chosen = [self.examples[i] for i in order[start : start + size]]
                yield collate(chosen, self.tokenizer.pad_token_id)

    def train(self, show_progress: bool = True) -> dict:
        args, out = self.args, Path(self.args.output_dir)
        write_resolved(args, out)
        torch.manual_seed(args.seed)
        optimizer, scheduler = build_optimizer(self.model, args, args.max_steps)
        writer, batches = MetricsWriter(out, args.report_to), self.batches()
        self.model.train()
        started, loss = time.perf_counter(), float("nan")
        with progress_bar("SFT", disable=not show_progress) as bar:
            task = bar.add_task("sft", total=args.max_steps, status="")
            for step in range(1, args.max_steps + 1):
                batch = {k: v.to(self.device) for k, v in next(batches).items()}
                nll = completion_nll(self.model, batch)
                nll.backward()
                grad_norm = clip_and_step(self.model, optimizer, scheduler, args.max_grad_norm)
                loss = nll.item()
                writer.write(step, {"train/loss": loss, "train/grad_norm": grad_norm,
                                    "train/learning_rate": scheduler.get_last_lr()[0]})
                if args.save_steps and step % args.save_steps == 0:
                    save_model(self.model, self.tokenizer, out / f"checkpoint-{step}")
                bar.update(task, advance=1, status=f"loss {loss:.3f}")
        writer.close()
        self.model = final_model(self.model)
        save_model(self.model, self.tokenizer, out / "model")
        summary = {"stage": "sft", "steps": args.max_steps, "final_loss": loss,
                   "seconds": time.perf_counter() - started, "model_dir": str(out / "model")}
        write_summary(out, summary)
        return summary
