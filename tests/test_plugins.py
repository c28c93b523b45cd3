"""Algorithms as plug-ins: the registry's contract, a loss and an estimator written outside the
package and trained with from Python and from YAML, and a check that the trainers name none."""

import ast
import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from grpokit import GRPOConfig, GRPOTrainer
from grpokit.algorithms import REGISTRIES, Registry
from grpokit.algorithms.estimators.group_relative import REWARD_SCALES
from grpokit.cli import app
from grpokit.errors import ConfigError
from grpokit.models import build_char_tokenizer, create_tiny_model

TINY = dict(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64)
ROWS = [{"prompt": f"say {i}:"} for i in range(8)]

# a user's module: a REINFORCE loss (no ratio, no clip) and a "rank within the group" estimator
USER_MODULE = '''
import torch
from grpokit.algorithms import register_advantage_estimator, register_policy_loss
from grpokit.algorithms.policy_losses import finish

CALLS = {"loss": 0, "estimator": 0}


@register_policy_loss("reinforce_test")
def reinforce(inputs, settings):
    CALLS["loss"] += 1
    ratio = torch.exp(inputs.logp - inputs.old_logp.detach())
    return finish(-inputs.advantages * inputs.logp, ratio, inputs, settings)


@register_advantage_estimator("rank_test")
def rank_in_group(inputs, config):
    CALLS["estimator"] += 1
    grouped = inputs.rewards.view(-1, inputs.group_size)
    ranks = grouped.argsort(1).argsort(1).float()
    centred = (ranks - ranks.mean(1, keepdim=True)).view(-1)
    return centred[:, None].expand_as(inputs.mask)
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_algorithms.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    sys.modules.pop("my_algorithms", None)
    yield
    module = sys.modules.pop("my_algorithms", None)
    if module is not None:  # forget its registrations so a re-import can register again
        for registry in REGISTRIES.values():
            for name in ("reinforce_test", "rank_test"):
                registry._functions.pop(name, None)


def a_count(prompts, completions, **kwargs):
    return [float(c.count("a")) for c in completions]


def test_registry_rejects_duplicates_and_lists_the_names_on_a_miss():
    registry = Registry("widget", "widget")
    registry.register("one")(len)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("one")(len)
    with pytest.raises(ValueError, match="':'"):
        registry.register("a:b")
    with pytest.raises(ConfigError, match=r"unknown widget 'onee'; did you mean 'one'\? Valid: 'one'"):
        registry.get("onee")
    assert registry.get("math:sqrt")(4.0) == 2.0


def test_a_loss_and_an_estimator_registered_outside_the_package_train_from_python(tmp_path, user_module):
    import my_algorithms

    tokenizer = build_char_tokenizer()
    args = GRPOConfig(output_dir=str(tmp_path / "run"), max_steps=2, prompts_per_step=2, num_generations=4,
                      max_completion_length=6, policy_loss="reinforce_test", advantage_estimator="rank_test")
    model = create_tiny_model(tokenizer, **TINY)
    before = [p.detach().clone() for p in model.parameters()]
    GRPOTrainer(model, [a_count], args=args, train_dataset=ROWS, processing_class=tokenizer).train(show_progress=False)
    assert my_algorithms.CALLS == {"loss": 2, "estimator": 2}  # one micro-batch per step
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_plugins_by_import_path_train_from_yaml(tmp_path, user_module):
    config = {
        "model": "embedded",
        "data": {"task": "digit_sum", "num_train": 16, "num_test": 2},
        "grpo": {"max_steps": 1, "prompts_per_step": 2, "num_generations": 2, "max_completion_length": 8,
                 "output_dir": str(tmp_path / "grpo"), "policy_loss": "my_algorithms:reinforce",
                 "advantage_estimator": "my_algorithms:rank_in_group", "loss_type": "dapo"},
    }
    path = tmp_path / "plugins.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["train", str(path), "--no-progress"])
    assert result.exit_code == 0, result.output
    import my_algorithms

    assert my_algorithms.CALLS["loss"] >= 1 and my_algorithms.CALLS["estimator"] == 1
    assert json.loads((tmp_path / "grpo" / "summary.json").read_text())["steps"] == 1


def test_a_misspelled_plugin_is_a_config_error_with_the_valid_names():
    with pytest.raises(ConfigError, match=r"policy_loss: unknown policy loss 'cipso'; did you mean 'cispo'"):
        GRPOConfig(policy_loss="cipso")
    assert GRPOConfig(loss_type="cispo").policy_loss == "cispo"  # TRL's spelling
    assert GRPOConfig(loss_type="cispo").loss_type == "dapo"


# ------------------------------------------------------------------ the trainers name no algorithm
TRAINERS = Path(__file__).parents[1] / "src" / "grpokit" / "trainers"
ALGORITHM_NAMES = ({name for registry in REGISTRIES.values() for name in registry.names()}
                   | set(REWARD_SCALES) | {"token", "sequence"})
ALGORITHM_OPTIONS = {"scale_rewards", "importance_sampling_level", "loss_type", "advantage_estimator",
                     "policy_loss", "step_separator"}


def algorithm_references(source: str) -> list[str]:
    """Comparisons with an algorithm's name, and reads of the options that pick one."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            for operand in [node.left, *node.comparators]:
                values = operand.elts if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) else [operand]
                found += [f"line {node.lineno}: compares with {v.value!r}" for v in values
                          if isinstance(v, ast.Constant) and v.value in ALGORITHM_NAMES]
        reads_config = (isinstance(node, ast.Attribute) and node.attr in ALGORITHM_OPTIONS
                        and getattr(node.value, "id", getattr(node.value, "attr", None)) == "args")
        if reads_config:
            found.append(f"line {node.lineno}: reads {node.attr}")
    return found


def test_the_check_finds_what_the_trainer_used_to_do():
    assert algorithm_references('if args.scale_rewards != "batch":\n    pass') == [
        "line 1: compares with 'batch'", "line 1: reads scale_rewards"]
    assert algorithm_references('x = kind in ("dapo", "other")') == ["line 1: compares with 'dapo'"]


@pytest.mark.parametrize("path", sorted(TRAINERS.glob("*.py")), ids=lambda p: p.name)
def test_trainer_code_names_no_algorithm(path):
    allowed = {"__init__"}  # the trainers' constructors look the plug-ins up by the config's names
    source = path.read_text()
    tree = ast.parse(source)
    flagged = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name not in allowed:
            flagged += algorithm_references(textwrap.dedent(ast.get_source_segment(source, node)))
    assert not flagged, f"{path.name}: {flagged}"
