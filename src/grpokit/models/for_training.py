"""The model a trainer trains: loaded from a path, a built-in name or an object, on its device,
with LoRA adapters and activation checkpointing when the config asks; merged back at the end."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from grpokit.config import OptimConfig
from grpokit.errors import ConfigError
from grpokit.models.builtin import BUILTIN_MODELS, builtin_model_dir
from grpokit.models.loading import load_model, load_tokenizer, pick_device
from grpokit.models.transformers_compat import enable_activation_checkpointing
from grpokit.parallel.ranks import setup


def resolve_model(
    model: str | Path | PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    args: OptimConfig,
    peft_config: LoraConfig | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, torch.device]:
    """Load ``model`` if it is a path; take the tokenizer from ``tokenizer`` or the same path.

    With ``args.use_lora`` (or a ``peft_config``, as in TRL) the model is wrapped with LoRA
    adapters; with ``args.gradient_checkpointing`` activations are recomputed in backward.
    Under torchrun this process first joins the process group (``grpokit.parallel.ranks``).
    """
    setup(args.distributed_timeout)
    device = pick_device(args.device)
    if isinstance(model, (str, Path)):
        model = builtin_model_dir(model) if model in BUILTIN_MODELS else model
        tokenizer = tokenizer or load_tokenizer(model)
        model = load_model(model, device)
    elif tokenizer is None:
        raise ConfigError("a model object was given without processing_class: pass its tokenizer")
    else:
        model = model.to(device)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if args.gradient_checkpointing:
        enable_activation_checkpointing(model)
    if peft_config is not None or args.use_lora:
        model = get_peft_model(model, peft_config or lora_config(args))
    return model, tokenizer, device


def lora_config(args: OptimConfig) -> LoraConfig:
    """The peft ``LoraConfig`` described by the ``lora_*`` settings."""
    return LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                      target_modules=args.lora_target_modules, task_type="CAUSAL_LM")


def is_peft(model) -> bool:
    return isinstance(model, PeftModel)


def final_model(model: PreTrainedModel) -> PreTrainedModel:
    """The model to save at the end: LoRA adapters merged into the base weights (in place)."""
    return model.merge_and_unload() if is_peft(model) else model
