"""`grpokit pipeline`: every stage type in order, skipping finished stages, stage checks."""

import json

import pytest
import yaml

from grpokit.config import ConfigError, StageSpec, load_config
from grpokit.recipes.pipeline import check_stages, run_pipeline, substitute

TINY = {
    "model": "embedded",
    "data": {"task": "digit_sum", "num_train": 64, "num_test": 4},
    "rewards": ["format", "correctness"],
    "sft": {"learning_rate": 5e-3, "per_device_train_batch_size": 8, "max_steps": 4, "max_length": 64},
    "grpo": {"learning_rate": 1e-4, "prompts_per_step": 2, "num_generations": 2, "max_steps": 1,
             "max_completion_length": 16},
    "sample": {"num_prompts": 8, "num_samples": 2, "max_completion_length": 16, "min_rewards": {}},
    "rm": {"learning_rate": 1e-3, "per_device_train_batch_size": 4, "max_steps": 2, "max_length": 64},
    "eval": {"num_samples": 2, "num_problems": 4, "max_completion_length": 16},
    "pipeline": {
        "score_with": "rm",
        "stages": [
            {"name": "sft", "type": "sft"},
            {"name": "grpo", "type": "grpo"},
            {"name": "sample", "type": "rejection_sample"},
            {"name": "sft2", "type": "sft", "data_from": "sample", "overrides": {"sft": {"max_steps": 2}}},
            {"name": "rm", "type": "rm", "init": "base", "overrides": {"data": {"num_train": 16}}},
            {"name": "grpo2", "type": "grpo",
             "overrides": {"rewards": ["format", {"name": "reward_model", "path": "${rm}", "alias": "rm_score"}]}},
        ],
    },
}


def write_config(tmp_path, tree):
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_all_stage_types_run_in_order_and_a_restart_skips_them(tmp_path, single_thread):
    out = tmp_path / "run"
    cfg = load_config(write_config(tmp_path, TINY), [f"pipeline.output_dir={out}"])
    summary = run_pipeline(cfg, show_progress=False, announce=lambda line: None)
    names = [s["name"] for s in summary["stages"]]
    assert names == ["sft", "grpo", "sample", "sft2", "rm", "grpo2"]
    by_name = {s["name"]: s for s in summary["stages"]}
    for name in ("sft", "grpo", "sft2", "grpo2"):  # policy stages are evaluated and RM-scored
        assert {"pass@1", "maj@k", "reward_model_score"} <= set(by_name[name]["eval"])
    assert by_name["sample"]["eval"] is None and by_name["rm"]["eval"] is None
    assert by_name["sample"]["output"].endswith("sample/sft.jsonl")
    # sft2 trained on the rejection-sampled set, grpo2 started from sft2 and used the RM
    sft2_run = yaml.safe_load((out / "sft2" / "run_config.yaml").read_text())
    assert sft2_run["data"]["path"] == by_name["sample"]["output"]
    grpo2_metrics = json.loads((out / "grpo2" / "metrics.jsonl").read_text().splitlines()[0])
    assert "reward/rm_score/mean" in grpo2_metrics
    assert json.loads((out / "summary.json").read_text())["stages"][5]["name"] == "grpo2"

    stamp = (out / "grpo" / "model" / "model.safetensors").stat().st_mtime_ns
    lines = []
    again = run_pipeline(cfg, show_progress=False, announce=lines.append)
    assert all("skipped" in line for line in lines) and len(lines) == 6
    assert (out / "grpo" / "model" / "model.safetensors").stat().st_mtime_ns == stamp
    assert again["stages"] == summary["stages"]


def test_a_failed_stage_is_the_one_rerun(tmp_path, single_thread):
    tree = json.loads(json.dumps(TINY))
    tree["pipeline"] = {"stages": [{"name": "sft", "type": "sft"},
                                   {"name": "grpo", "type": "grpo", "overrides": {"rewards": ["nosuch"]}}]}
    out = tmp_path / "run"
    cfg = load_config(write_config(tmp_path, tree), [f"pipeline.output_dir={out}"])
    with pytest.raises(ValueError, match="unknown reward 'nosuch'"):
        run_pipeline(cfg, show_progress=False, announce=lambda line: None)
    assert list(json.loads((out / "pipeline_state.json").read_text())) == ["sft"]
    fixed = load_config(write_config(tmp_path, tree), [f"pipeline.output_dir={out}",
                                                       "pipeline.stages.grpo.overrides.rewards=[format]"])
    lines = []
    run_pipeline(fixed, show_progress=False, announce=lines.append)
    assert "skipped" in lines[0] and "skipped" not in lines[1]


def test_stage_references_are_checked_before_anything_runs():
    sft, rs = StageSpec(name="a", type="sft"), StageSpec(name="s", type="rejection_sample")
    with pytest.raises(ValueError, match="two stages are named 'a'"):
        check_stages([sft, sft])
    with pytest.raises(ValueError, match="init='later'"):
        check_stages([StageSpec(name="b", type="grpo", init="later")])
    with pytest.raises(ValueError, match="data_from='a' must name an earlier rejection_sample"):
        check_stages([sft, rs, StageSpec(name="c", type="sft", data_from="a")])
    check_stages([sft, rs, StageSpec(name="c", type="sft", data_from="s", init="base")])
    with pytest.raises(ValueError, match="has not run before it"):
        substitute({"path": "${rm}"}, {"sft": "x"}, "stage 'g'")


def test_override_reaches_a_named_stage_and_reports_unknown_names(tmp_path):
    path = write_config(tmp_path, TINY)
    cfg = load_config(path, ["pipeline.stages.sft2.overrides.sft.max_steps=7"])
    assert cfg.pipeline.stages[3].overrides["sft"]["max_steps"] == 7
    with pytest.raises(ConfigError, match="no entry named 'nope'"):
        load_config(path, ["pipeline.stages.nope.overrides.sft.max_steps=7"])


def test_evaluate_base_adds_the_starting_model_as_the_first_column(tmp_path, single_thread):
    tree = {**TINY, "pipeline": {"evaluate_base": True, "stages": [{"name": "sft", "type": "sft"}]}}
    cfg = load_config(write_config(tmp_path, tree), [f"pipeline.output_dir={tmp_path / 'run'}"])
    summary = run_pipeline(cfg, show_progress=False, announce=lambda line: None)
    assert [(s["name"], s["type"]) for s in summary["stages"]] == [("base", "base"), ("sft", "sft")]
    assert summary["stages"][0]["eval"]["num_problems"] == 4 and (tmp_path / "run" / "eval-base").is_dir()
    with pytest.raises(ConfigError, match="'base' names the starting model"):
        check_stages([StageSpec(name="base", type="sft")])
