"""The config tree: YAML + dotted overrides, clear errors naming key and source, round trips."""

import pytest
import yaml
from pydantic import ValidationError

from grpokit.config import (
    ConfigError,
    EvalConfig,
    GRPOConfig,
    RunConfig,
    SFTConfig,
    apply_override,
    load_config,
    reference_markdown,
    write_resolved,
)


def write_yaml(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


# ------------------------------------------------------------------------ loading and overrides


def test_yaml_file_then_dotted_overrides(tmp_path):
    path = write_yaml(tmp_path, """
model: models/base
data:
  num_train: 50
grpo:
  beta: 0.04
  num_generations: 4
  loss_type: dr_grpo
sft:
  max_steps: 5
""")
    cfg = load_config(path, ["grpo.beta=0.1", "sft.max_steps=7", "eval.num_samples=3"])
    assert isinstance(cfg, RunConfig)
    assert cfg.model == "models/base"
    assert cfg.data.num_train == 50 and cfg.data.task == "digit_sum"  # untouched default
    assert cfg.grpo.beta == 0.1  # override wins over the file
    assert cfg.grpo.num_generations == 4 and cfg.grpo.loss_type == "dr_grpo"
    assert cfg.sft.max_steps == 7 and cfg.eval.num_samples == 3
    assert cfg.grpo.epsilon == 0.2 and cfg.sft.learning_rate == 2e-5  # section defaults


def test_defaults_without_a_file():
    cfg = load_config(None)
    assert cfg == RunConfig()
    assert cfg.model == "embedded" and cfg.rewards == ["format", "correctness"]
    assert cfg.grpo.num_generations == 8 and cfg.sft.lr_scheduler_type == "linear"
    assert load_config(None, ["grpo.top_k=5"]).grpo.top_k == 5


def test_empty_yaml_file_means_defaults(tmp_path):
    assert load_config(write_yaml(tmp_path, "")) == RunConfig()


def test_overrides_parse_yaml_values():
    tree = {"grpo": {"beta": 0.0}}
    for dotted in ["grpo.beta=0.04", "grpo.max_completion_length=64", "grpo.top_p= 0.9",
                   "grpo.reward_weights=[1, 0.5]", "grpo.max_prompt_length=null",
                   "grpo.use_lora=true", "model=runs/sft/model", "new.section.key=[a, b]"]:
        apply_override(tree, dotted)
    assert tree == {
        "grpo": {"beta": 0.04, "max_completion_length": 64, "top_p": 0.9,
                 "reward_weights": [1, 0.5], "max_prompt_length": None, "use_lora": True},
        "model": "runs/sft/model",
        "new": {"section": {"key": ["a", "b"]}},
    }
    assert type(tree["grpo"]["max_completion_length"]) is int
    assert type(tree["grpo"]["beta"]) is float


def test_overrides_reach_the_validated_config(tmp_path):
    path = write_yaml(tmp_path, "grpo:\n  max_prompt_length: 128\n")
    cfg = load_config(path, ["grpo.max_prompt_length=null", "grpo.reward_weights=[2, 0.5]",
                             "rewards=[format]", "grpo.report_to=[tensorboard]",
                             "grpo.epsilon_high=0.28", "sft.lora_target_modules=[q_proj, v_proj]"])
    assert cfg.grpo.max_prompt_length is None
    assert cfg.grpo.reward_weights == [2.0, 0.5]
    assert cfg.rewards == ["format"]
    assert cfg.grpo.report_to == ["tensorboard"]
    assert cfg.grpo.epsilon_high == 0.28
    assert cfg.sft.lora_target_modules == ["q_proj", "v_proj"]


def test_malformed_overrides():
    with pytest.raises(ConfigError, match="not of the form key.path=value"):
        apply_override({}, "grpo.beta")
    with pytest.raises(ConfigError, match="'model' is not a section"):
        apply_override({"model": "embedded"}, "model.path=x")


def test_missing_or_non_mapping_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    path = write_yaml(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(path)


# ---------------------------------------------------------------------------------- bad keys


@pytest.mark.parametrize("text,section,wrong,right", [
    ("grpo:\n  num_generation: 4\n", "grpo", "num_generation", "num_generations"),
    ("sft:\n  max_step: 3\n", "sft", "max_step", "max_steps"),
    ("eval:\n  tempature: 0.5\n", "eval", "tempature", "temperature"),
    ("dta:\n  task: digit_sum\n", None, "dta", "data"),
])
def test_unknown_key_suggests_the_nearest_valid_name(tmp_path, text, section, wrong, right):
    path = write_yaml(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    key = f"{section}.{wrong}" if section else wrong
    assert str(info.value) == f"{path}: {key}: unknown key; did you mean {right!r}?"


def test_unknown_key_in_an_override_names_the_override_not_the_file(tmp_path):
    path = write_yaml(tmp_path, "grpo:\n  beta: 0.0\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["grpo.num_generation=4"])
    assert str(info.value) == ("override 'grpo.num_generation=4': grpo.num_generation: unknown key; "
                               "did you mean 'num_generations'?")


def test_every_problem_is_reported_with_its_source(tmp_path):
    path = write_yaml(tmp_path, "grpo:\n  num_generation: 4\n  leraning_rate: 1.0\nsft:\n  max_stepz: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["eval.num_samples=0"])
    lines = str(info.value).splitlines()
    assert lines[0] == "config: 4 problems:"
    assert sorted(lines[1:]) == sorted([
        f"  {path}: grpo.num_generation: unknown key; did you mean 'num_generations'?",
        f"  {path}: grpo.leraning_rate: unknown key; did you mean 'learning_rate'?",
        f"  {path}: sft.max_stepz: unknown key; did you mean 'max_steps'?",
        "  override 'eval.num_samples=0': eval.num_samples: Input should be greater than or equal to 1 (got 0)",
    ])


def test_a_problem_in_a_named_pipeline_stage_names_the_stage_index(tmp_path):
    path = write_yaml(tmp_path, "pipeline:\n  stages:\n    - {name: a, type: sft}\n    - {name: b, type: grpoo}\n")
    with pytest.raises(ConfigError, match=r"pipeline.stages\[1\].type: Input should be 'sft', 'grpo'"):
        load_config(path)


def test_unknown_key_without_a_close_match_lists_the_valid_keys(tmp_path):
    path = write_yaml(tmp_path, "data:\n  zzzzzz: 1\n")
    with pytest.raises(ConfigError, match="valid keys here: chat, format, num_test, num_train, path, seed, "
                                          "system_prompt, task, task_options, test_path"):
        load_config(path)


@pytest.mark.parametrize("key,value,problem", [
    ("epsilon", "1.5", "less than 1"),
    ("num_generations", "1", "greater than or equal to 2"),
    ("top_p", "0", "greater than 0"),
    ("top_p", "1.5", "less than or equal to 1"),
    ("loss_type", "ppo", "Valid: 'bnpo', 'dapo', 'dr_grpo', 'grpo'"),
])
def test_out_of_range_values_name_the_key_path_and_the_file(tmp_path, key, value, problem):
    path = write_yaml(tmp_path, f"grpo:\n  {key}: {value}\n", name="bad.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: grpo.{key}: ")
    assert problem in message and f"(got {yaml.safe_load(value)!r})" in message


def test_every_problem_is_reported(tmp_path):
    path = write_yaml(tmp_path, "grpo:\n  epsilon: 1.5\n  num_generations: 1\n")
    message = str(pytest.raises(ConfigError, load_config, path).value)
    assert "grpo.epsilon:" in message and "grpo.num_generations:" in message


def test_direct_construction_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ConfigError, match="^GRPOConfig: num_generation: unknown key; "
                                          "did you mean 'num_generations'"):
        GRPOConfig(num_generation=4)
    with pytest.raises(ConfigError, match="^SFTConfig: learning_rte: unknown key"):
        SFTConfig(learning_rte=1e-3)
    with pytest.raises(ConfigError, match="epsilon: Input should be less than 1"):
        GRPOConfig(epsilon=1.5)
    cfg = GRPOConfig(num_generations=4, beta=0.04)
    assert cfg.num_generations == 4 and cfg.beta == 0.04
    with pytest.raises(ValidationError):
        cfg.num_generations = 1  # assignments are validated too
    assert cfg.num_generations == 4


# --------------------------------------------------------------------------- writing, reference


def test_write_resolved_round_trips_through_load_config(tmp_path):
    cfg = load_config(None, ["model=runs/sft/model", "grpo.beta=0.04", "grpo.reward_weights=[1, 2]",
                             "grpo.max_prompt_length=64", "eval.num_samples=4",
                             "grpo.report_to=[tensorboard]", "data.path=data/train.jsonl"])
    path = write_resolved(cfg, tmp_path / "out", name="run_config.yaml")
    assert path == tmp_path / "out" / "run_config.yaml" and path.is_file()
    again = load_config(path)
    assert again == cfg
    assert again.grpo.reward_weights == [1.0, 2.0] and again.data.path == "data/train.jsonl"


def test_write_resolved_section_is_a_complete_config_yaml(tmp_path):
    section = GRPOConfig(num_generations=4, epsilon_high=0.28, top_k=3)
    path = write_resolved(section, tmp_path)
    assert path.name == "config.yaml"
    written = yaml.safe_load(path.read_text())
    assert set(written) == set(GRPOConfig.model_fields)
    assert GRPOConfig.model_validate(written) == section
    assert EvalConfig.model_validate(yaml.safe_load(write_resolved(
        EvalConfig(num_samples=2), tmp_path, "eval.yaml").read_text())) == EvalConfig(num_samples=2)


def test_reference_markdown_documents_every_field():
    markdown = reference_markdown()
    rows = {line.split("`")[1]: line for line in markdown.splitlines()}
    for section, model in [("grpo", GRPOConfig), ("sft", SFTConfig), ("eval", EvalConfig)]:
        for name in model.model_fields:
            key = f"{section}.{name}"
            if key not in rows:  # a nested section: its own keys are listed under key.*
                assert any(row.startswith(key + ".") for row in rows), key
                continue
            cells = [cell.strip() for cell in rows[key].strip()[1:-1].split("|")]
            assert len(cells) == 3, rows[key]
            meaning = cells[2]
            assert meaning, f"{key} has no description"
    assert rows["grpo.num_generations"].startswith("| `grpo.num_generations` | `8` | Completions")
    assert "`model`" in markdown and "`data.task`" in markdown and "`rewards`" in markdown


def test_an_empty_yaml_section_means_defaults_and_takes_overrides(tmp_path):
    path = tmp_path / "empty_section.yaml"
    path.write_text("grpo:\n")
    assert load_config(path).grpo.beta == GRPOConfig().beta
    assert load_config(path, ["grpo.beta=0.1"]).grpo.beta == 0.1


def test_the_config_reference_page_is_generated_from_the_config_classes():
    from pathlib import Path

    from grpokit.config import reference_markdown

    page = (Path(__file__).parents[1] / "docs" / "config.md").read_text()
    generated = reference_markdown().strip()
    regenerate = "regenerate the table in docs/config.md: replace it with the output of python -m grpokit.config"
    assert generated in page, regenerate
    rows = [line for line in page.splitlines() if line.startswith("| `")]
    assert len(rows) == len(generated.splitlines()), regenerate  # and no stale rows around it


def test_a_bare_off_in_yaml_is_the_off_choice(tmp_path):
    """YAML 1.1 reads ``off`` as false; fields whose choices include 'off' take it as 'off'."""
    path = tmp_path / "run.yaml"
    path.write_text("grpo:\n  dynamic_sampling: off\n  monitor:\n    alerts:\n      kl: {action: off}\n")
    config = load_config(path, ["ppo.monitor.alerts.entropy.action=off"])
    assert config.grpo.dynamic_sampling == "off"
    assert config.grpo.monitor.alerts.kl.action == "off"
    assert config.ppo.monitor.alerts.entropy.action == "off"
