"""The config tree: validated pydantic models, YAML loading and dotted overrides.

Every field's docstring is its only help text (the README's config reference is generated from
these by ``python -m grpokit.config``). Unknown keys are rejected with the nearest valid name.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A config key or value that is not valid; the message names the key and the source."""


class Section(BaseModel):
    """Base for every config section: unknown keys are errors with a "did you mean"."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            # an empty YAML section (``grpo:`` with nothing under it) means "all defaults"
            data = {k: ({} if v is None and _is_section(cls, k) else v) for k, v in data.items()}
            valid = list(cls.model_fields)
            for key in data:
                if key not in valid:
                    raise ConfigError(unknown_key_message(str(key), valid, cls.__name__))
        return data


def _is_section(model: type[BaseModel], key: str) -> bool:
    field = model.model_fields.get(key)
    return field is not None and isinstance(field.annotation, type) and issubclass(field.annotation, Section)


def unknown_key_message(key: str, valid: list[str], where: str) -> str:
    """Explain an unknown key, suggesting the closest valid one.

    >>> unknown_key_message("num_generation", ["num_generations", "beta"], "GRPOConfig")
    "unknown key 'num_generation' in GRPOConfig; did you mean 'num_generations'?"
    """
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(sorted(valid))}"
    return f"unknown key {key!r} in {where}; {hint}"


class OptimConfig(Section):
    """Optimizer and schedule settings shared by every trainer."""

    output_dir: str = "runs/train"
    """Where the resolved config, metrics.jsonl, checkpoints and summary.json are written."""
    seed: int = 0
    """Seed for model init, data order and sampling."""
    learning_rate: float = Field(1e-6, gt=0)
    """Peak AdamW learning rate."""
    lr_scheduler_type: Literal["constant", "linear", "cosine"] = "constant"
    """Schedule after warm-up: constant, linear decay to 0, or cosine decay to 0."""
    warmup_steps: int = Field(0, ge=0)
    """Optimizer steps of linear warm-up from 0."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    """AdamW beta1."""
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    """AdamW beta2."""
    max_grad_norm: float = Field(1.0, ge=0)
    """Clip the global gradient norm to this value (0 turns clipping off)."""
    max_steps: int = Field(100, ge=1)
    """Number of training steps (see each trainer for what one step is)."""
    logging_steps: int = Field(1, ge=1)
    """Print a progress line every this many steps (metrics.jsonl gets every step)."""
    save_steps: int = Field(0, ge=0)
    """Write a checkpoint-N directory every this many steps (0: only the final model)."""
    device: str = "auto"
    """'auto' picks CUDA when present, else CPU; or 'cpu', 'cuda', 'cuda:1'."""
    report_to: list[Literal["tensorboard"]] = Field(default_factory=list)
    """Extra metric sinks besides metrics.jsonl: 'tensorboard'."""
    use_lora: bool = False
    """Train LoRA adapters (peft) instead of every weight. With beta > 0 the reference model is
    the same base with its adapters disabled, so no second copy is held. The final model is
    saved merged; checkpoints hold the adapters."""
    lora_r: int = Field(16, ge=1)
    """LoRA rank."""
    lora_alpha: int = Field(32, ge=1)
    """LoRA scaling numerator (the update is scaled by lora_alpha / lora_r)."""
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the LoRA input."""
    lora_target_modules: list[str] | str = "all-linear"
    """Modules that get adapters: 'all-linear' or a list of module names such as [q_proj, v_proj]."""
    bf16: bool = False
    """Run model forward passes under bfloat16 autocast (weights and optimizer stay fp32); meant
    for GPUs with bf16 support."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory (the training forward then runs each
    completion with its own prompt instead of sharing the prompt across the group)."""


class SFTConfig(OptimConfig):
    """Supervised fine-tuning: one step is one optimizer step on a batch of demonstrations."""

    output_dir: str = "runs/sft"
    """Where the resolved config, metrics.jsonl, checkpoints and summary.json are written."""
    learning_rate: float = Field(2e-5, gt=0)
    """Peak AdamW learning rate."""
    lr_scheduler_type: Literal["constant", "linear", "cosine"] = "linear"
    """Schedule after warm-up: constant, linear decay to 0, or cosine decay to 0."""
    per_device_train_batch_size: int = Field(8, ge=1)
    """Demonstrations per optimizer step."""
    max_length: int = Field(1024, ge=2)
    """Prompt + completion tokens kept per demonstration (longer ones are cut at the right)."""


class GRPOConfig(OptimConfig):
    """GRPO: one step samples ``prompts_per_step × num_generations`` completions, scores them and
    takes ``num_iterations`` optimizer steps (μ) on that batch."""

    output_dir: str = "runs/grpo"
    """Where the resolved config, metrics.jsonl, checkpoints and summary.json are written."""
    prompts_per_step: int = Field(8, ge=1)
    """Unique prompts sampled per step."""
    num_generations: int = Field(8, ge=2)
    """Completions per prompt (G): the group over which advantages are normalised."""
    num_iterations: int = Field(1, ge=1)
    """Optimizer steps (μ) on each sampled batch; old log-probs come from the sampling policy."""
    micro_batch_size: int = Field(16, ge=1)
    """Completions per forward/backward pass; bounds memory only, never changes the math."""
    beta: float = Field(0.0, ge=0)
    """KL coefficient (k3 estimator against the frozen reference). 0: no reference model kept."""
    epsilon: float = Field(0.2, gt=0, lt=1)
    """Lower clip range: ratios below 1 - epsilon are clipped."""
    epsilon_high: float | None = Field(None, gt=0)
    """Upper clip range (DAPO clip-higher); None uses epsilon."""
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = "grpo"
    """Loss normalisation: grpo (token mean per sequence, then mean), bnpo / dapo (token mean over
    the batch; they differ only across processes), dr_grpo (sum / max_completion_length)."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """Divide advantages by the group's reward std, the batch's, or not at all (Dr. GRPO)."""
    reward_weights: list[float] | None = None
    """Weight of each reward function in the total reward; None weighs each 1."""
    importance_sampling_level: Literal["token", "sequence"] = "token"
    """Importance ratio per token (GRPO) or one length-normalised ratio per sequence (GSPO)."""
    mask_truncated_completions: bool = False
    """Leave completions that hit max_completion_length out of the loss."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature; log-probs in the loss use the same temperature."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling mass."""
    top_k: int = Field(0, ge=0)
    """Sample only among the k most likely tokens (0: off)."""
    max_prompt_length: int | None = Field(None, ge=1)
    """Prompts longer than this many tokens are cut at the left (None: keep whole)."""
    max_completion_length: int = Field(256, ge=1)
    """Most tokens sampled per completion."""


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


class DataConfig(Section):
    """Where prompts come from: a built-in task or a dataset file."""

    task: str | None = "digit_sum"
    """Built-in task name (see grpokit.tasks), used when path is not set."""
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


class RunConfig(Section):
    """A whole run: which model, which data and rewards, and each stage's settings."""

    model: str = "embedded"
    """A local save_pretrained model directory, or 'embedded' (create the built-in default)."""
    data: DataConfig = Field(default_factory=DataConfig)
    """Prompt source."""
    rewards: list[str] = Field(default_factory=lambda: ["format", "correctness"])
    """Reward functions by registered name or 'package.module:function'."""
    sft: SFTConfig = Field(default_factory=SFTConfig)
    """Stage settings for `grpokit sft`."""
    grpo: GRPOConfig = Field(default_factory=GRPOConfig)
    """Stage settings for `grpokit train`."""
    eval: EvalConfig = Field(default_factory=EvalConfig)
    """Stage settings for `grpokit eval`."""


def apply_override(tree: dict, dotted: str) -> None:
    """Apply ``"a.b=value"`` to a nested dict; the value is parsed as YAML.

    >>> tree = {"grpo": {"beta": 0.0}}
    >>> apply_override(tree, "grpo.beta=0.04"); tree
    {'grpo': {'beta': 0.04}}
    """
    if "=" not in dotted:
        raise ConfigError(f"override {dotted!r} is not of the form key.path=value")
    path, raw = dotted.split("=", 1)
    *parents, leaf = path.strip().split(".")
    node = tree
    for key in parents:
        if node.get(key) is None:  # absent, or an empty YAML section
            node[key] = {}
        node = node[key]
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
    node[leaf] = yaml.safe_load(raw)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML run config (or defaults when ``path`` is None) and apply overrides."""
    source = str(path) if path else "defaults"
    tree: dict = {}
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {source!r} does not exist")
        tree = yaml.safe_load(path.read_text()) or {}
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {source!r}: expected a mapping at the top level")
    for dotted in overrides:
        apply_override(tree, dotted)
    return validate(RunConfig, tree, source)


def validate(model: type[BaseModel], tree: dict, source: str) -> Any:
    """Build ``model`` from ``tree``, turning validation errors into one clear ConfigError."""
    try:
        return model.model_validate(tree)
    except ValidationError as error:
        raise ConfigError(f"{source}: " + describe(error)) from None


def describe(error: ValidationError) -> str:
    """One line per problem: ``key.path: message (got value)``."""
    lines = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        got = f" (got {item['input']!r})" if not isinstance(item["input"], dict) else ""
        lines.append(f"{key}: {message}{got}")
    return "; ".join(lines)


def write_resolved(config: BaseModel, output_dir: str | Path, name: str = "config.yaml") -> Path:
    """Write the resolved config as YAML to ``output_dir/name``.

    Trainers write their own section as ``config.yaml``; the CLI stages also write the whole
    run tree (model, data, rewards, every section) as ``run_config.yaml``.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / name
    target.write_text(yaml.safe_dump(config.model_dump(), sort_keys=False))
    return target


def reference_markdown(model: type[Section] = RunConfig, prefix: str = "") -> str:
    """A markdown table of every key, its default and its meaning (for the README)."""
    rows = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, Section):
            rows.append(reference_markdown(annotation, f"{prefix}{name}."))
            continue
        default = field.get_default(call_default_factory=True)
        doc = " ".join((field.description or "").split())
        rows.append(f"| `{prefix}{name}` | `{default!r}` | {doc} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print("| key | default | meaning |\n|---|---|---|\n" + reference_markdown())
