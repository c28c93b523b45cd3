"""grpokit: Group Relative Policy Optimization for language models.

The trainers and configs are imported on first use, so ``import grpokit`` (and the command
line's ``--help``) does not import torch.

>>> from grpokit import GRPOConfig
>>> GRPOConfig(num_generations=4).num_generations
4
"""

import importlib

_EXPORTS = {
    "EvalConfig": "grpokit.config", "GRPOConfig": "grpokit.config", "PPOConfig": "grpokit.config",
    "RewardModelConfig": "grpokit.config", "RunConfig": "grpokit.config", "SFTConfig": "grpokit.config",
    "GRPOTrainer": "grpokit.trainers.grpo", "PPOTrainer": "grpokit.trainers.ppo",
    "RewardModelTrainer": "grpokit.trainers.reward_trainer", "SFTTrainer": "grpokit.trainers.sft",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'grpokit' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
