"""Held-out evaluation: metrics on a hand-made case, and an end-to-end run on a tiny model."""

import json

import pytest

from grpokit.config import EvalConfig
from grpokit.evaluation.evaluate import evaluate, score_problems
from grpokit.sampling.sampler import SamplingParams, generate
from grpokit.tasks import DigitSumTask

pytestmark = pytest.mark.usefixtures("single_thread")


def good(answer):
    return f"<reasoning>r</reasoning><answer>{answer}</answer>"


def test_score_problems_hand_computed():
    k = 3
    texts = [
        # problem 0, answer 5: correct + formatted, correct unformatted, wrong formatted
        good(5), "<answer>5</answer>", good(6),
        # problem 1, answer 7: no answer, wrong formatted, correct unformatted
        "I think it is 7", good(8), "<answer>7</answer>",
        # problem 2, answer 10: all wrong (formatted with whitespace, formatted, unformatted)
        " <reasoning>a</reasoning>\n<answer>9</answer>\n", good(9), "<answer>11</answer>",
    ]
    greedy = [good(5), "<answer>7.0</answer>", good("ten")]
    metrics = score_problems(texts, greedy, [{"answer": a} for a in ("5", "7", "10")], k=k)
    # correct counts c = 2, 1, 0 of n = 3
    # pass@1 = mean(c / n) = (2/3 + 1/3 + 0) / 3
    assert metrics["pass@1"] == pytest.approx(1 / 3)
    # pass@3 with n = 3: 1 if any sample is correct
    assert metrics["pass@k"] == pytest.approx(2 / 3)
    # votes: {5: 2, 6: 1} -> 5 right; {8: 1, 7: 1} tie -> first seen (8) wrong; {9: 2, 11: 1} wrong
    assert metrics["maj@k"] == pytest.approx(1 / 3)
    # greedy: 5 right, 7.0 == 7 numerically right, "ten" wrong
    assert metrics["greedy_accuracy"] == pytest.approx(2 / 3)
    # well formatted samples: 2 + 1 + 2 of 9
    assert metrics["format_rate"] == pytest.approx(5 / 9)
    assert metrics["k"] == 3 and metrics["num_problems"] == 3


def test_score_problems_pass_at_k_below_n():
    # n = k = 4 samples per problem, c = 1 and 3 correct
    texts = [good(1), good(2), good(2), good(2), good(3), good(3), good(3), good(0)]
    metrics = score_problems(texts, [good(1), good(1)], [{"answer": "1"}, {"answer": "3"}], k=4)
    assert metrics["pass@1"] == pytest.approx((1 / 4 + 3 / 4) / 2)
    assert metrics["pass@k"] == pytest.approx(1.0)
    assert metrics["maj@k"] == pytest.approx(0.5)  # problem 0 votes 2 (wrong), problem 1 votes 3
    assert metrics["greedy_accuracy"] == pytest.approx(0.5)
    assert metrics["format_rate"] == pytest.approx(1.0)


def test_evaluate_tiny_model_end_to_end(varied_model, char_tokenizer, tmp_path):
    rows = DigitSumTask().problems(4, seed=0)
    cfg = EvalConfig(num_samples=3, max_completion_length=10, num_problems=3, batch_prompts=2,
                     temperature=1.0, seed=5, device="cpu")
    samples_path = tmp_path / "eval" / "samples.jsonl"
    metrics = evaluate(varied_model, char_tokenizer, rows, cfg, show_progress=False,
                       samples_path=samples_path)
    assert set(metrics) == {"pass@1", "pass@k", "maj@k", "greedy_accuracy", "format_rate",
                            "mean_completion_length", "k", "num_problems"}
    for key in ("pass@1", "pass@k", "maj@k", "greedy_accuracy", "format_rate"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["k"] == 3 and metrics["num_problems"] == 3  # num_problems caps the 4 rows
    assert 1 <= metrics["mean_completion_length"] <= 10

    records = [json.loads(line) for line in samples_path.read_text().splitlines()]
    assert len(records) == 3
    for record, row in zip(records, rows):
        assert record["prompt"] == row["prompt"] and record["answer"] == row["answer"]
        assert len(record["samples"]) == 3 and all(isinstance(s, str) for s in record["samples"])
        assert isinstance(record["greedy"], str)

    # The greedy text is the model's greedy completion, without EOS or padding.
    tok = char_tokenizer
    for record in records:
        ids = tok(record["prompt"], add_special_tokens=False)["input_ids"]
        rollout = generate(varied_model, [ids], 1, SamplingParams(10, temperature=0),
                           tok.eos_token_id, tok.pad_token_id)
        assert record["greedy"] == tok.decode(rollout.token_lists()[0], skip_special_tokens=True)

    # Same seed, same samples.
    again_path = tmp_path / "again.jsonl"
    again = evaluate(varied_model, char_tokenizer, rows, cfg, show_progress=False,
                     samples_path=again_path)
    assert again == metrics
    assert again_path.read_text() == samples_path.read_text()
