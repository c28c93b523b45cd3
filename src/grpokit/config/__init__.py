"""The config tree: validated pydantic models, YAML loading and dotted overrides.

``sections`` (the base class and error reporting), ``monitor``, ``rollout`` (the rollout
engine), ``training`` (trainer
settings), ``judge``, ``run`` (data, sampling, evaluation, pipeline and the root ``RunConfig``)
and ``load`` (YAML, overrides, the resolved config, the generated reference). Every field's
docstring is its only help text (the config reference in docs/config.md is generated from these
by ``python -m grpokit.config``). Unknown keys are rejected with the nearest valid name.
"""

from grpokit.config.judge_settings import JudgeConfig
from grpokit.config.load import apply_override, load_config, reference_markdown, write_resolved
from grpokit.config.monitor import (SINK_PACKAGES, AlertsConfig, EntropyAlertConfig, KLAlertConfig, LengthAlertConfig,
                                    MonitorConfig, NoSignalAlertConfig, NonFiniteAlertConfig, RewardHackingAlertConfig,
                                    RewardShiftAlertConfig, TruncationAlertConfig)
from grpokit.config.rollout import RolloutConfig
from grpokit.config.run import DataConfig, EvalConfig, PipelineConfig, RunConfig, SampleConfig, StageSpec
from grpokit.config.sections import Section, problems, validate
from grpokit.config.training import (GRPOConfig, OptimConfig, PPOConfig, RewardModelConfig, SamplingConfig,
                                     SFTConfig)
from grpokit.errors import ConfigError

__all__ = ["SINK_PACKAGES", "AlertsConfig", "ConfigError", "DataConfig", "EntropyAlertConfig", "EvalConfig",
           "GRPOConfig", "JudgeConfig", "KLAlertConfig", "LengthAlertConfig", "MonitorConfig", "NoSignalAlertConfig",
           "NonFiniteAlertConfig", "OptimConfig", "PPOConfig", "PipelineConfig", "RewardHackingAlertConfig",
           "RewardModelConfig", "RewardShiftAlertConfig", "RolloutConfig", "RunConfig", "SFTConfig", "SampleConfig",
           "SamplingConfig", "Section", "StageSpec", "TruncationAlertConfig", "apply_override", "load_config",
           "problems", "reference_markdown", "validate", "write_resolved"]
