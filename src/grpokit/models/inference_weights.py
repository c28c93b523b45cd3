"""The policy's weights as an inference engine loads them: under the base model's parameter
names, with LoRA adapters merged in."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers import PreTrainedModel

from grpokit.models.for_training import is_peft

_PEFT_PREFIX = "base_model.model."


def base_name(peft_name: str) -> str:
    """A LoRA-wrapped parameter's name in the base model.

    >>> base_name("base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight")
    'model.layers.0.self_attn.q_proj.weight'
    """
    name = peft_name.removeprefix(_PEFT_PREFIX)
    return name.replace(".base_layer.", ".")


@contextmanager
def policy_weights(model: PreTrainedModel, merged: bool) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """``(name, tensor)`` pairs of ``model``'s weights, valid inside the ``with`` block.

    ``merged``: the base model's names and weights, a LoRA model's adapters merged in for the
    block's duration (peft's ``merge_adapter``, undone on exit) and the adapter tensors left
    out; otherwise the model's own parameters, adapters included, under their own names.
    """
    if not merged:
        yield [(name, param.detach()) for name, param in model.named_parameters()]
        return
    if not is_peft(model):
        yield [(name, tensor.detach()) for name, tensor in model.state_dict().items()]
        return
    with torch.no_grad():
        model.merge_adapter()
    try:
        yield [(base_name(name), tensor.detach()) for name, tensor in model.state_dict().items()
               if "lora_" not in name]
    finally:
        with torch.no_grad():
            model.unmerge_adapter()
