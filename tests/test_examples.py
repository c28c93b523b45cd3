"""Every config in examples/ validates (keys, values, extras), and the GPU recipe differs from the
SmolLM2 LoRA recipe only in the model, the device and the batch sizes."""

from pathlib import Path

import pytest
import yaml

from grpokit.config import load_config

EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.mark.parametrize("path", sorted(EXAMPLES.rglob("*.yaml")), ids=lambda p: p.name)
def test_example_config_validates(path):
    load_config(path)


def flat(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_the_gpu_recipe_changes_only_the_model_device_and_batch():
    recipes = EXAMPLES / "recipes"
    cpu, gpu = (dict(flat(yaml.safe_load((recipes / name).read_text())))
                for name in ("smollm2_reasoning_gym_lora.yaml", "qwen2.5_1.5b_lora_gpu.yaml"))
    changed = {key for key in cpu.keys() | gpu.keys() if cpu.get(key) != gpu.get(key)}
    allowed = {"model", "pipeline.output_dir", "grpo.prompts_per_step", "grpo.micro_batch_size",
               "eval.batch_prompts", *(f"{section}.{key}" for section in ("sft", "grpo", "eval")
                                       for key in ("device", "bf16"))}
    assert changed <= allowed, changed - allowed
