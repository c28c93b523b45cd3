"""The two transformers API names grpokit uses that changed in 5.2x, read the way the installed
version spells them: vLLM's CPU build pins transformers below 5.20, so a trainer next to a
colocated vLLM engine runs on the older names; everywhere else grpokit needs >= 5.24.

- the forward's KV-cache argument: ``cache`` (>= 5.24) or ``past_key_values``; the model fills
  the cache it is given in place, so callers keep their own object rather than the output's;
- activation checkpointing: ``activation_checkpointing_enable`` / ``is_activation_checkpointing``
  (>= 5.24) or ``gradient_checkpointing_enable`` / ``is_gradient_checkpointing``.
"""

from __future__ import annotations

import inspect

from transformers import PreTrainedModel
from transformers.cache_utils import Cache
from transformers.models.llama.modeling_llama import LlamaModel

_CACHE_ARGUMENT = "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"
_NEW_CHECKPOINTING = hasattr(PreTrainedModel, "activation_checkpointing_enable")


def with_cache(cache: Cache) -> dict:
    """The forward keywords that make a model read and extend ``cache``."""
    return {_CACHE_ARGUMENT: cache, "use_cache": True}


def enable_activation_checkpointing(model: PreTrainedModel) -> None:
    """Recompute activations in backward (non-reentrant checkpoints)."""
    kwargs = {"use_reentrant": False}
    if _NEW_CHECKPOINTING:
        model.activation_checkpointing_enable(kwargs)
    else:
        model.gradient_checkpointing_enable(kwargs)


def activation_checkpointing_on(model: PreTrainedModel) -> bool:
    return model.is_activation_checkpointing if _NEW_CHECKPOINTING else model.is_gradient_checkpointing
