"""The run: data, rejection sampling, evaluation, pipeline stages, and ``RunConfig``, the root of
the tree a YAML file fills."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from grpokit.config.judge_settings import JudgeConfig
from grpokit.config.sections import Section
from grpokit.config.training import GRPOConfig, PPOConfig, RewardModelConfig, SFTConfig
from grpokit.data import DEFAULT_SYSTEM_PROMPT


class SampleConfig(Section):
    """Rejection sampling: k completions per prompt, kept when they pass the verifiers."""

    output_dir: str = "runs/sample"
    """Where sft.jsonl (the kept completions with provenance) and summary.json are written."""
    num_samples: int = Field(8, ge=1)
    """Completions sampled per prompt (k)."""
    num_prompts: int | None = Field(None, ge=1)
    """Training prompts to sample from (None: all of them)."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling mass."""
    max_completion_length: int = Field(256, ge=1)
    """Most tokens sampled per completion."""
    min_rewards: dict[str, float] = Field(default_factory=lambda: {"format": 1.0, "correctness": 1.0})
    """Verifiers: a completion is kept only if each named reward (from `rewards`) is at least this
    value; a reward that returns None for a sample does not block it."""
    judge: JudgeConfig | None = None
    """Optional LLM judge (the keys of the judge reward: base_url or serve, model, rubric, ...); asked only
    about completions that passed the verifiers."""
    judge_min_score: float = Field(0.5, ge=0, le=1)
    """Normalised judge score a completion needs to be kept."""
    near_duplicate_threshold: float = Field(0.9, gt=0, le=1)
    """Drop a completion whose character 3-gram Jaccard similarity to one already kept for the
    same prompt is at least this (1.0: exact duplicates only)."""
    max_per_prompt: int = Field(2, ge=1)
    """Most completions kept per prompt."""
    difficulty_column: str | None = None
    """Dataset column that names each prompt's difficulty for the acceptance report; None buckets
    prompts by the share of their samples that pass the verifiers."""
    batch_prompts: int = Field(64, ge=1)
    """Prompts sampled together (memory bound only)."""
    seed: int = 0
    """Sampling seed."""
    device: str = "auto"
    """'auto' picks CUDA when present, else CPU."""


class EvalConfig(Section):
    """Held-out evaluation: k samples per problem plus one greedy completion."""

    output_dir: str = "runs/eval"
    """Where summary.json and samples.jsonl are written."""
    num_samples: int = Field(8, ge=1)
    """Samples per problem (k) for pass@1, pass@k and maj@k."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature for the k samples (greedy accuracy is measured separately)."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling mass."""
    max_completion_length: int = Field(256, ge=1)
    """Most tokens sampled per completion."""
    num_problems: int = Field(200, ge=1)
    """Held-out problems evaluated."""
    batch_prompts: int = Field(64, ge=1)
    """Problems sampled together (memory bound only)."""
    seed: int = 1234
    """Sampling seed."""
    device: str = "auto"
    """'auto' picks CUDA when present, else CPU."""
    without_tools: bool = False
    """For a task with tools (multiply_tool): also evaluate the model with the tools taken away,
    as pass@1_without_tools and greedy_accuracy_without_tools."""


class DataConfig(Section):
    """Where prompts come from: a built-in task or a dataset file."""

    task: str | None = "digit_sum"
    """Built-in task, used when path is not set: 'digit_sum' (the embedded default's task),
    'multiply_tool' (its agent task: products with a calculator tool, trained and evaluated as
    multi-turn episodes) or 'reasoning_gym' (any reasoning-gym dataset; needs the [real] extra)."""
    task_options: dict[str, Any] = Field(default_factory=dict)
    """Options of the task: for reasoning_gym {dataset: chain_sum, config: {...the dataset's
    own config keys...}, system_prompt: ...}; for digit_sum min_digits, max_digits, slip_rate,
    no_reasoning_rate, hedge_rate. num_train, num_test and seed below give the sizes and seed."""
    path: str | None = None
    """A .jsonl/.json/.csv/.parquet file or a save_to_disk directory with a 'prompt' column."""
    num_train: int = Field(4000, ge=1)
    """Training prompts generated from the task."""
    num_test: int = Field(200, ge=1)
    """Held-out problems generated from the task (disjoint from training)."""
    seed: int = 0
    """Seed of the task generator."""
    test_path: str | None = None
    """Held-out rows (prompt, answer) for `grpokit eval`; None generates them from the task."""
    format: Literal["none", "gsm8k", "math"] = "none"
    """Row format of path/test_path: 'gsm8k' (question, answer ending '#### 42') or 'math' (problem,
    solution with \\boxed{}) become prompt + final answer; 'none' reads prompt/answer as they are."""
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    """System message put before each gsm8k/math question (None: no system message)."""
    chat: bool = True
    """Make gsm8k/math prompts chat-message lists (rendered with the tokenizer's chat template)."""


class StageSpec(Section):
    """One stage of `grpokit pipeline`."""

    name: str = Field(min_length=1)
    """Stage name: its directory under pipeline.output_dir, and how later stages refer to it."""
    type: Literal["sft", "grpo", "ppo", "rejection_sample", "rm", "judge"]
    """What the stage runs; sft/grpo/ppo produce a policy, rejection_sample an SFT set, rm a
    reward model, judge a generative judge (SFT on judgements, with the sft settings) that a
    later stage serves with sample.judge.serve: ${name}."""
    init: str = "previous"
    """Model the stage starts from: 'previous' (the latest policy), 'base' (the run's model), or
    an earlier stage's name."""
    data_from: str | None = None
    """For sft: an earlier rejection_sample stage whose sft.jsonl is this stage's training set."""
    overrides: dict[str, Any] = Field(default_factory=dict)
    """Run-config keys for this stage only, merged over the top-level config, e.g.
    {grpo: {max_steps: 50}, rewards: [...]}; the string '${stage}' becomes that stage's output."""
    evaluate: bool = True
    """Evaluate the stage's policy on the held-out problems (policy stages only)."""


class PipelineConfig(Section):
    """`grpokit pipeline`: stages run in order, each policy stage starting from the previous one."""

    output_dir: str = "runs/pipeline"
    """Each stage writes to output_dir/<stage name>; pipeline_state.json records finished stages."""
    stages: list[StageSpec] = Field(default_factory=list)
    """The stages, in order (names must be unique)."""
    score_with: str | None = None
    """An rm stage whose reward model scores every evaluated stage's held-out samples (reported as
    eval.reward_model_score)."""
    evaluate_base: bool = False
    """Evaluate the starting model too, as a 'base' column before the stages."""


class RunConfig(Section):
    """A whole run: which model, which data and rewards, and each stage's settings."""

    model: str = "embedded"
    """A local save_pretrained model directory, 'embedded' (the 0.8M-parameter default, created in
    code), or a built-in pretrained model by name ('smollm2-135m-instruct'; `grpokit models list`),
    converted once into the cache."""
    data: DataConfig = Field(default_factory=DataConfig)
    """Prompt source."""
    rewards: list[str | dict[str, Any]] = Field(default_factory=lambda: ["format", "correctness"])
    """Reward functions by registered name or 'package.module:function'; a mapping {name: ..., **kwargs} binds keyword arguments."""
    sft: SFTConfig = Field(default_factory=SFTConfig)
    """Stage settings for `grpokit sft`."""
    grpo: GRPOConfig = Field(default_factory=GRPOConfig)
    """Stage settings for `grpokit train`."""
    eval: EvalConfig = Field(default_factory=EvalConfig)
    """Stage settings for `grpokit eval`."""
    sample: SampleConfig = Field(default_factory=SampleConfig)
    """Stage settings for `grpokit sample` (rejection sampling)."""
    rm: RewardModelConfig = Field(default_factory=RewardModelConfig)
    """Stage settings for `grpokit rm` (reward-model training)."""
    ppo: PPOConfig = Field(default_factory=PPOConfig)
    """Stage settings for `grpokit ppo`."""
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    """Stages for `grpokit pipeline`."""
