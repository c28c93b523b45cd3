"""Built-in tasks by name with their options; reasoning-gym problems, noisy demonstrations and
config errors (the real-model tests train on them)."""

import pytest

from grpokit.data import prompt_key
from grpokit.errors import ConfigError
from grpokit.tasks import get_task

CHAIN_SUM = {"dataset": "chain_sum", "config": {"min_terms": 2, "max_terms": 2, "max_digits": 1}}


def test_task_options_are_checked_against_the_task():
    assert get_task("digit_sum", min_digits=2).min_digits == 2
    with pytest.raises(ConfigError, match=r"task 'digit_sum' has no option\(s\) \['min_digit'\]; it takes: min_digits"):
        get_task("digit_sum", min_digit=2)
    with pytest.raises(ConfigError, match="data.task: unknown task 'digitsum'"):
        get_task("digitsum")


def test_reasoning_gym_names_a_misspelled_dataset_and_a_bad_config():
    with pytest.raises(ConfigError, match="no dataset 'chain_summ'; did you mean 'chain_sum'"):
        get_task("reasoning_gym", dataset="chain_summ")
    with pytest.raises(ConfigError, match="data.task_options.config for reasoning-gym dataset 'chain_sum'"):
        get_task("reasoning_gym", dataset="chain_sum", config={"max_termz": 2}).problems(2, seed=0)


def test_demonstrations_keep_the_format_and_the_teacher_is_wrong_as_often_as_asked():
    task = get_task("reasoning_gym", **CHAIN_SUM, teacher_error_rate=0.4)
    rows = task.sft_rows(200, seed=0)
    texts = [r["completion"][0]["content"] for r in rows]
    assert all(t.startswith("<reasoning>\n") and t.endswith("\n</answer>") for t in texts)
    wrong = sum(not task.is_correct(t, r) for t, r in zip(texts, rows)) / len(rows)
    assert 0.3 < wrong < 0.5
    exact = get_task("reasoning_gym", **CHAIN_SUM, teacher_error_rate=0.0).sft_rows(50, seed=0)
    assert all(task.is_correct(r["completion"][0]["content"], r) for r in exact)


def test_training_problems_leave_out_the_held_out_prompts():
    task = get_task("reasoning_gym", **CHAIN_SUM)
    held_out = {prompt_key(r["prompt"]) for r in task.problems(50, seed=10_000)}
    train = task.problems(100, seed=0, exclude=held_out)
    assert len(train) == 100 and not held_out & {prompt_key(r["prompt"]) for r in train}
