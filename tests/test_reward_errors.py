"""A reward function that raises: by default an error naming the function, the sample and its
prompt; with on_error="skip" (GRPO's reward_errors: skip) None for the samples it raises on,
counted as reward/<name>/errors."""

import json
import math

import pytest
import torch

from grpokit import GRPOConfig, GRPOTrainer
from grpokit.models import build_char_tokenizer, create_tiny_model
from grpokit.errors import RewardFunctionError
from grpokit.rewards import reward_metrics, score_completions

PROMPTS = ["2+2=", "3+3="]
COMPLETIONS = ["4", "oops", "6", "7"]  # G = 2 completions per prompt


def picky(prompts, completions, **kwargs):
    """Raises on any batch holding 'oops' (as a parser would); 1.0 per character otherwise."""
    if "oops" in completions:
        raise ValueError("cannot parse 'oops'")
    return [float(len(c)) for c in completions]


def one_at_a_time(prompts, completions, **kwargs):
    """Only ever fails on batches: each sample alone scores fine."""
    if len(completions) > 1:
        raise RuntimeError("batch too large")
    return [1.0]


def constant(prompts, completions, **kwargs):
    return [0.5] * len(completions)


def score(funcs, on_error):
    return score_completions(funcs, prompts=PROMPTS, completions=COMPLETIONS,
                             completion_ids=[[1]] * 4, on_error=on_error)


def test_by_default_the_error_names_the_function_the_line_the_sample_and_its_prompt():
    with pytest.raises(RewardFunctionError, match="cannot parse 'oops'") as error:
        score([constant, picky], "raise")
    message = str(error.value)
    assert "reward function 'picky' raised ValueError" in message and "on sample 1 of 4" in message
    assert f"test_reward_errors.py:{picky.__code__.co_firstlineno + 3} in picky" in message
    assert "sample 1 prompt: '2+2='" in message and "sample 1 completion: 'oops'" in message
    assert "reward_errors: skip" in message
    assert isinstance(error.value.__cause__, ValueError)  # the function's own exception


def test_skip_scores_the_failing_samples_none_and_counts_them():
    batch = score([constant, picky], "skip")
    expected = torch.tensor([[0.5, 1.0], [0.5, math.nan], [0.5, 1.0], [0.5, 1.0]])
    torch.testing.assert_close(batch.per_func, expected, equal_nan=True)
    torch.testing.assert_close(batch.total, torch.tensor([1.5, 0.5, 1.5, 1.5]))
    assert batch.errors == {"constant": 0, "picky": 1}
    metrics = reward_metrics(batch)
    assert metrics["reward/picky/errors"] == 1.0 and metrics["reward/constant/errors"] == 0.0
    assert metrics["reward/picky/mean"] == 1.0  # the None is left out of the mean


def test_a_function_that_fails_only_on_whole_batches():
    with pytest.raises(RewardFunctionError, match="batch too large") as error:
        score([one_at_a_time], "raise")
    assert "on a batch of 4 samples" in str(error.value)
    batch = score([one_at_a_time], "skip")  # the per-sample calls succeed, so they are used
    assert batch.per_func[:, 0].tolist() == [1.0] * 4 and batch.errors == {"one_at_a_time": 0}


def test_bad_on_error_value():
    with pytest.raises(ValueError, match="on_error is 'ignore'; expected 'raise' or 'skip'"):
        score([constant], "ignore")


def test_grpo_trains_on_with_reward_errors_skip(tmp_path, single_thread):
    def says_a(prompts, completions, **kwargs):
        if any("a" in c for c in completions):
            raise KeyError("a")
        return [0.0] * len(completions)

    tokenizer = build_char_tokenizer()
    make = lambda errors: GRPOTrainer(  # noqa: E731
        model=create_tiny_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                                intermediate_size=64),
        reward_funcs=[says_a], processing_class=tokenizer,
        train_dataset=[{"prompt": f"say {i}:"} for i in range(4)],
        args=GRPOConfig(output_dir=str(tmp_path / errors), max_steps=2, prompts_per_step=2,
                        num_generations=8, max_completion_length=32, reward_errors=errors))
    with pytest.raises(RewardFunctionError, match="reward function 'says_a' raised KeyError") as error:
        make("raise").train(show_progress=False)
    assert isinstance(error.value.__cause__, KeyError)

    make("skip").train(show_progress=False)
    lines = [json.loads(line) for line in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()]
    errors = [line["reward/says_a/errors"] for line in lines]
    assert len(errors) == 2 and sum(errors) > 0
