"""grpokit: Group Relative Policy Optimization for language models.

>>> from grpokit import GRPOConfig
>>> GRPOConfig(num_generations=4).num_generations
4
"""

from grpokit.config import EvalConfig, GRPOConfig, PPOConfig, RewardModelConfig, RunConfig, SFTConfig
from grpokit.trainers.grpo import GRPOTrainer
from grpokit.trainers.ppo import PPOTrainer
from grpokit.trainers.reward_model import RewardModelTrainer
from grpokit.trainers.sft import SFTTrainer

__all__ = ["EvalConfig", "GRPOConfig", "GRPOTrainer", "PPOConfig", "PPOTrainer", "RewardModelConfig",
           "RewardModelTrainer", "RunConfig", "SFTConfig", "SFTTrainer"]
