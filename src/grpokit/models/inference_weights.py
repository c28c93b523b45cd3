"""The policy's weights as an inference engine loads them: under the base model's parameter
names, with LoRA adapters merged in."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from peft.tuners.lora import LoraLayer
from transformers import PreTrainedModel

from grpokit.models.for_training import is_peft

_PEFT_PREFIX = "base_model.model."


def base_name(peft_name: str, adapter: str = "default") -> str:
    """A LoRA-wrapped parameter's name in the base model (a ``modules_to_save`` copy, which is
    trained, takes the place of the module it copies).

    >>> base_name("base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight")
    'model.layers.0.self_attn.q_proj.weight'
    >>> base_name("base_model.model.lm_head.modules_to_save.default.weight")
    'lm_head.weight'
    """
    name = peft_name.removeprefix(_PEFT_PREFIX)
    return name.replace(".base_layer.", ".").replace(f".modules_to_save.{adapter}.", ".")


@contextmanager
def policy_weights(model: PreTrainedModel, merged: bool) -> Iterator[Iterator[tuple[str, torch.Tensor]]]:
    """``(name, tensor)`` pairs of ``model``'s weights, produced one at a time inside the
    ``with`` block.

    ``merged``: the base model's names and weights, a LoRA model's adapters merged in out of
    place (base + the adapter's delta, one weight at a time, so the frozen base never changes
    and at most one merged weight exists at once) and the adapter tensors left out; otherwise
    the model's own parameters, adapters included, under their own names.
    """
    if not merged:
        yield ((name, param.detach()) for name, param in model.named_parameters())
    elif not is_peft(model):
        yield ((name, tensor.detach()) for name, tensor in model.state_dict().items())
    else:
        yield _merged_lora_weights(model)


@torch.no_grad()
def _merged_lora_weights(model) -> Iterator[tuple[str, torch.Tensor]]:
    adapted = {f"{name}.base_layer.weight": module for name, module in model.named_modules()
               if isinstance(module, LoraLayer) and not module.merged}
    for name, tensor in model.state_dict().items():
        if "lora_" in name or ".original_module." in name:  # adapters; what modules_to_save replaces
            continue
        module = adapted.get(name)
        if module is not None:
            tensor = tensor + sum(module.get_delta_weight(adapter) for adapter in module.active_adapters
                                  if adapter in module.lora_A)
        yield base_name(name, model.active_adapter), tensor.detach()
