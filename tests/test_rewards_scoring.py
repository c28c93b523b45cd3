"""Tests for grpokit.rewards.scoring: TRL-style calls, validation, metrics, registry."""

import math

import numpy as np
import pytest
import torch

from grpokit.errors import ConfigError, ImportPathError
from grpokit.rewards import (
    REWARD_REGISTRY,
    RewardBatch,
    RewardFunctionError,
    register_reward,
    resolve_reward,
    reward_metrics,
    score_completions,
)

NAN = float("nan")


def constant(value):
    """A reward function returning ``value`` for every completion."""

    def const(prompts, completions, **kwargs):
        return [value] * len(completions)

    return const


def score(funcs, completions, prompts=("p",), columns=None, **kw):
    """score_completions with dummy completion_ids."""
    return score_completions(funcs, list(prompts), completions, [[1]] * len(completions), columns or {}, **kw)


# ----------------------------------------------------------------------------- kwargs


def test_kwargs_repeat_prompts_and_columns_per_completion():
    seen = {}

    def spy(prompts, completions, **kwargs):
        seen.update(prompts=prompts, completions=completions, **kwargs)
        return [0.0] * len(completions)

    score_completions(
        [spy], ["p0", "p1"], ["a", "b", "c", "d"], [[1], [2], [3], [4, 5]],
        {"answer": ["x", "y"], "level": [1, 2]}, trainer_state={"global_step": 7},
    )
    assert seen["prompts"] == ["p0", "p0", "p1", "p1"]
    assert seen["completions"] == ["a", "b", "c", "d"]
    assert seen["completion_ids"] == [[1], [2], [3], [4, 5]]
    assert seen["answer"] == ["x", "x", "y", "y"]
    assert seen["level"] == [1, 1, 2, 2]
    assert seen["trainer_state"] == {"global_step": 7}


def test_per_completion_prompts_passed_as_is():
    seen = {}

    def spy(prompts, completions, answer, **kwargs):
        seen.update(prompts=prompts, answer=answer, kwargs=kwargs)
        return [0.0, 0.0]

    score_completions([spy], ["p", "q"], ["a", "b"], [[1], [2]], {"answer": [1, 2]})
    assert seen["prompts"] == ["p", "q"] and seen["answer"] == [1, 2]
    assert "trainer_state" not in seen["kwargs"]


def test_conversational_completions_wrapped():
    chat = [{"role": "user", "content": "hi"}]
    seen = {}

    def spy(prompts, completions, **kwargs):
        seen["completions"] = completions
        return [1.0, 1.0]

    score([spy], ["yo", "hey"], prompts=[chat])
    assert seen["completions"] == [
        [{"role": "assistant", "content": "yo"}],
        [{"role": "assistant", "content": "hey"}],
    ]


def test_mutation_by_one_function_not_seen_by_next():
    def mutate(prompts, completions, **kwargs):
        completions.clear()
        return [0.0, 0.0]

    def count(prompts, completions, **kwargs):
        return [float(len(completions))] * 2

    assert score([mutate, count], ["a", "b"]).per_func[:, 1].tolist() == [2.0, 2.0]


def test_column_length_and_reserved_name_errors():
    with pytest.raises(ValueError, match="column 'answer' has 3 values; expected one per prompt \\(2\\)"):
        score([constant(0.0)], ["a", "b", "c", "d"], prompts=["p", "q"], columns={"answer": [1, 2, 3]})
    with pytest.raises(ValueError, match="dataset column 'completions' clashes"):
        score([constant(0.0)], ["a"], columns={"completions": ["x"]})
    with pytest.raises(ValueError, match="3 completions but 2 prompts"):
        score([constant(0.0)], ["a", "b", "c"], prompts=["p", "q"])


# ------------------------------------------------------------------------ values, NaN


def test_none_becomes_nan_and_total_is_nansum():
    def some_none(prompts, completions, **kwargs):
        return [1.0, None, None]

    def other(prompts, completions, **kwargs):
        return [2, None, True]

    batch = score([some_none, other], ["a", "b", "c"])
    assert batch.names == ["some_none", "other"]
    assert batch.per_func.dtype == torch.float32 and batch.per_func.shape == (3, 2)
    assert torch.equal(batch.per_func.isnan(), torch.tensor([[False, False], [True, True], [True, False]]))
    assert batch.total.tolist() == [3.0, 0.0, 1.0]  # all-None row -> 0


def test_weights_scale_total():
    batch = score([constant(1.0), constant(None), constant(3.0)], ["a", "b"], weights=[2.0, 5.0, -0.5])
    assert batch.total.tolist() == [0.5, 0.5]


def test_weights_count_mismatch_names_both_counts():
    with pytest.raises(ValueError, match="got 1 weights for 2 reward functions"):
        score([constant(1.0), constant(2.0)], ["a"], weights=[1.0])


def test_array_tensor_and_numpy_scalar_outputs():
    def arr(prompts, completions, **kwargs):
        return np.array([1.5, 2.5])

    def ten(prompts, completions, **kwargs):
        return torch.tensor([0.0, 1.0])

    def scalars(prompts, completions, **kwargs):
        return (np.float32(0.5), np.int64(2))

    batch = score([arr, ten, scalars], ["a", "b"])
    assert batch.per_func.tolist() == [[1.5, 0.0, 0.5], [2.5, 1.0, 2.0]]


def test_names_of_callable_objects_and_duplicates():
    class LengthReward:
        def __call__(self, prompts, completions, **kwargs):
            return [float(len(c)) for c in completions]

    batch = score([LengthReward(), LengthReward()], ["ab"])
    assert batch.names == ["LengthReward", "LengthReward_2"]


# ------------------------------------------------------------------------ bad outputs


def test_wrong_length_names_function_and_counts():
    def short(prompts, completions, **kwargs):
        return [1.0]

    with pytest.raises(RewardFunctionError, match="'short' returned 1 rewards for 3 completions"):
        score([short], ["a", "b", "c"])


def test_non_number_names_function_index_value_and_sample():
    def texty(prompts, completions, **kwargs):
        return [1.0, "1.0"]

    with pytest.raises(RewardFunctionError) as info:
        score([texty], ["fine", "x" * 500], prompts=["what is 1?"])
    msg = str(info.value)
    assert "reward function 'texty' returned '1.0' (str) at index 1" in msg
    assert "is not a number" in msg
    assert "sample 1 prompt: 'what is 1?'" in msg
    completion_line = msg.splitlines()[-1]
    assert "xxxx..." in completion_line and len(completion_line) < 260


def test_nan_and_inf_rejected():
    for bad in (NAN, math.inf, np.float64("-inf")):
        with pytest.raises(RewardFunctionError, match=r"'const' returned .* at index 0, which is not finite"):
            score([constant(bad)], ["a"])


def test_non_list_output():
    def scalar(prompts, completions, **kwargs):
        return 1.0

    with pytest.raises(RewardFunctionError, match="'scalar' returned float \\(1.0\\); expected a list of 2"):
        score([scalar], ["a", "b"])


def test_2d_tensor_output():
    def grid(prompts, completions, **kwargs):
        return torch.zeros(2, 1)

    with pytest.raises(RewardFunctionError, match="'grid' returned a Tensor of shape \\(2, 1\\)"):
        score([grid], ["a", "b"])


def test_exception_inside_function_names_it_and_keeps_the_cause():
    def boom(prompts, completions, **kwargs):
        raise KeyError("answer")

    with pytest.raises(RewardFunctionError, match="reward function 'boom' raised KeyError") as info:
        score([boom], ["a"])
    assert isinstance(info.value.__cause__, KeyError)


# ----------------------------------------------------------------------------- metrics


def test_reward_metrics_hand_computed():
    batch = RewardBatch(
        per_func=torch.tensor([[1.0, NAN], [3.0, NAN], [NAN, NAN]]),
        total=torch.tensor([1.0, 3.0, 2.0]),
        names=["acc", "never"],
    )
    m = reward_metrics(batch)
    assert m["reward/acc/mean"] == 2.0
    assert m["reward/acc/std"] == pytest.approx(math.sqrt(2.0))  # sample std of [1, 3]
    assert math.isnan(m["reward/never/mean"]) and math.isnan(m["reward/never/std"])
    assert m["reward/mean"] == pytest.approx(2.0)
    assert m["reward/std"] == pytest.approx(1.0)
    assert set(m) == {"reward/acc/mean", "reward/acc/std", "reward/never/mean", "reward/never/std",
                      "reward/mean", "reward/std"}


def test_metrics_from_scored_batch():
    batch = score([constant(1.0)], ["a", "b"])
    assert reward_metrics(batch)["reward/const/std"] == 0.0


# ---------------------------------------------------------------------------- registry


def test_register_and_resolve_by_name():
    @register_reward("test_scoring_len")
    def length(prompts, completions, **kwargs):
        return [float(len(c)) for c in completions]

    try:
        assert resolve_reward("test_scoring_len") is length
        batch = score(["test_scoring_len"], ["abc"])
        assert batch.names == ["test_scoring_len"] and batch.total.tolist() == [3.0]  # registered name
        register_reward("test_scoring_len")(length)  # same object again: fine
        with pytest.raises(ValueError, match="'test_scoring_len' is already registered"):
            register_reward("test_scoring_len")(constant(1.0))
    finally:
        REWARD_REGISTRY.pop("test_scoring_len", None)


def test_resolve_by_import_path():
    import os.path

    assert resolve_reward("math:hypot") is math.hypot
    assert resolve_reward("os:path.join") is os.path.join
    assert resolve_reward("grpokit.rewards.scoring:score_completions") is score_completions


def test_resolve_callable_passthrough():
    fn = constant(1.0)
    assert resolve_reward(fn) is fn


def test_resolve_unknown_name_lists_registered_and_import_form():
    REWARD_REGISTRY["test_scoring_known"] = constant(1.0)
    try:
        with pytest.raises(ValueError) as info:
            resolve_reward("no_such_reward")
    finally:
        del REWARD_REGISTRY["test_scoring_known"]
    msg = str(info.value)
    assert "unknown reward 'no_such_reward'" in msg
    assert "test_scoring_known" in msg
    assert "'package.module:function'" in msg


def test_resolve_suggests_the_nearest_registered_name():
    with pytest.raises(ConfigError, match=r"rewards\[1\]: unknown reward 'formatt'; did you mean 'format'\?"):
        resolve_reward("formatt", "rewards[1]")


def test_resolve_bad_import_paths():
    with pytest.raises(ImportPathError, match="no module named 'no_such_module_xyz'. grpokit looks in the "
                                              "working directory"):
        resolve_reward("no_such_module_xyz:f")
    with pytest.raises(ImportPathError, match="module 'math' .* has no 'nope'"):
        resolve_reward("math:nope")
    with pytest.raises(ImportPathError, match="'pi' is a float, not a function"):
        resolve_reward("math:pi")


def test_register_bad_name():
    with pytest.raises(ValueError, match="without ':'"):
        register_reward("a:b")
