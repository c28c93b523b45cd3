"""What every trainer needs: the model and tokenizer from a path or object, checkpoints, summaries."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from grpokit.config import OptimConfig
from grpokit.models import load_model, load_tokenizer, pick_device


def resolve_model(
    model: str | Path | PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    args: OptimConfig,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, torch.device]:
    """Load ``model`` if it is a path; take the tokenizer from ``tokenizer`` or the same path."""
    device = pick_device(args.device)
    if isinstance(model, (str, Path)):
        tokenizer = tokenizer or load_tokenizer(model)
        model = load_model(model, device)
    elif tokenizer is None:
        raise ValueError("a model object was given without processing_class: pass its tokenizer")
    else:
        model = model.to(device)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, device


def write_summary(output_dir: str | Path, summary: dict) -> Path:
    """Write ``summary.json`` atomically (temp file + rename)."""
    target = Path(output_dir) / "summary.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, target)
    return target
