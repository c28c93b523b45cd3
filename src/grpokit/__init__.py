"""grpokit: Group Relative Policy Optimization for language models.

>>> from grpokit import GRPOConfig
>>> GRPOConfig(num_generations=4).num_generations
4
"""

from grpokit.config import EvalConfig, GRPOConfig, RunConfig, SFTConfig
from grpokit.trainers.grpo import GRPOTrainer
from grpokit.trainers.sft import SFTTrainer

__all__ = ["EvalConfig", "GRPOConfig", "GRPOTrainer", "RunConfig", "SFTConfig", "SFTTrainer"]
