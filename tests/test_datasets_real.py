"""GSM8K- and MATH-format rows: every file format load_rows reads, answer extraction, prompt rows."""

import json
from pathlib import Path

import datasets
import pytest

from grpokit.answers import boxed_answer, gsm8k_answer
from grpokit.data import DEFAULT_SYSTEM_PROMPT, DatasetError, load_rows, to_prompt_rows, validate_prompt_rows
from grpokit.rewards.math_answers import math_reward
from grpokit.rewards.rules import numeric_match_reward

DATA = Path(__file__).parent / "data"
GSM8K = DATA / "gsm8k_sample.jsonl"
MATH = DATA / "math_sample.jsonl"
GSM8K_FINALS = ["27", "14", "270", "25", "480", "40", "-7", "30", "636", "84",
                "48", "46", "2280", "4", "18", "36", "63", "5", "780", "41"]
MATH_FINALS = [r"\frac{11}{12}", "6", "5", r"6\sqrt{2}", "10", "9", "4", r"\frac{\sqrt{3}}{2}", r"(4, \infty)",
               r"\frac{1}{8}"]


def jsonl_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------------- every file format


@pytest.fixture(scope="module")
def gsm8k_rows():
    return jsonl_rows(GSM8K)


def write_json(rows, path):
    path.write_text(json.dumps(rows))


def write_csv(rows, path):
    datasets.Dataset.from_list(rows).to_csv(str(path), index=False)


def write_parquet(rows, path):
    datasets.Dataset.from_list(rows).to_parquet(str(path))


def write_saved_dataset(rows, path):
    datasets.Dataset.from_list(rows).save_to_disk(str(path))


def write_saved_dataset_dict(rows, path):
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                          "test": datasets.Dataset.from_list(rows[:2])}).save_to_disk(str(path))


@pytest.mark.parametrize("name, write", [
    ("gsm8k.json", write_json), ("gsm8k.csv", write_csv), ("gsm8k.parquet", write_parquet),
    ("saved", write_saved_dataset), ("saved_dict", write_saved_dataset_dict),
])
def test_every_format_reads_the_same_rows(tmp_path, gsm8k_rows, name, write):
    """Multi-line solutions with quotes, '$' and '<<...>>' survive each format unchanged."""
    write(gsm8k_rows, tmp_path / name)
    assert load_rows(tmp_path / name) == gsm8k_rows


def test_jsonl_sample_files_load(gsm8k_rows):
    assert load_rows(GSM8K) == gsm8k_rows and len(gsm8k_rows) == 20
    math_rows = load_rows(str(MATH))
    assert len(math_rows) == 10 and set(math_rows[0]) == {"problem", "level", "type", "solution"}


# -------------------------------------------------------------------------- answer extraction


def test_gsm8k_answers_of_the_sample(gsm8k_rows):
    assert [gsm8k_answer(row["answer"]) for row in gsm8k_rows] == GSM8K_FINALS


@pytest.mark.parametrize("text, final", [
    ("2 + 2 = <<2+2=4>>4\n#### 4", "4"),
    ("#### -12", "-12"),
    ("#### 1,000,000", "1000000"),
    ("a #### 3 then\n#### 5", "5"),       # the last marker counts
    ("no marker 42", None),
    ("####   ", None),
    (None, None),
])
def test_gsm8k_answer(text, final):
    assert gsm8k_answer(text) == final


def test_boxed_answers_of_the_sample():
    assert [boxed_answer(row["solution"]) for row in jsonl_rows(MATH)] == MATH_FINALS


@pytest.mark.parametrize("text, content", [
    (r"\boxed{5}", "5"),
    (r"$\boxed{\frac{\sqrt{3}}{2}}$", r"\frac{\sqrt{3}}{2}"),                 # nested braces
    (r"first \boxed{1}, finally \boxed{2}", "2"),                              # the last box
    (r"\boxed{\text{(A) } \{1, 2\}}", r"\text{(A) } \{1, 2\}"),                # escaped braces do not count
    (r"\boxed{\boxed{7}} and more", r"\boxed{7}"),                             # top level: the outer box
    (r"\fbox{x^{2}}", "x^{2}"),
    (r"\boxed{1} then \boxed{2", "1"),                                         # an unclosed box is skipped
    (r"\boxed 5", None),
    ("no box", None),
])
def test_boxed_answer(text, content):
    assert boxed_answer(text) == content


# -------------------------------------------------------------------------------- prompt rows


def test_gsm8k_chat_prompt_rows(gsm8k_rows):
    rows = validate_prompt_rows(to_prompt_rows(gsm8k_rows, "gsm8k"))
    assert [row["answer"] for row in rows] == GSM8K_FINALS
    assert rows[0] == {"prompt": [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
                                  {"role": "user", "content": gsm8k_rows[0]["question"]}], "answer": "27"}
    assert "<reasoning>" in DEFAULT_SYSTEM_PROMPT and "<answer>" in DEFAULT_SYSTEM_PROMPT


def test_math_plain_text_prompt_rows():
    rows = to_prompt_rows(load_rows(MATH), "math", system_prompt="Answer in \\boxed{}.", chat=False)
    assert rows[1] == {"prompt": "Answer in \\boxed{}.\n\nSolve for $x$: $2x + 7 = 19$.", "answer": "6"}
    assert [row["answer"] for row in rows] == MATH_FINALS
    bare = to_prompt_rows(load_rows(MATH)[:1], "math", system_prompt=None, chat=True)
    assert bare[0]["prompt"] == [{"role": "user", "content": r"Compute $\frac{3}{4} + \frac{1}{6}$."}]


def test_prompt_rows_feed_the_answer_rewards(gsm8k_rows):
    """The extracted answers are references the math and numeric rewards can use."""
    gsm8k = to_prompt_rows(gsm8k_rows, "gsm8k")
    right = [f"<reasoning>...</reasoning><answer>{row['answer']}</answer>" for row in gsm8k]
    off_by_one = [f"<answer>{int(row['answer']) + 1}</answer>" for row in gsm8k]
    answers = [row["answer"] for row in gsm8k]
    assert numeric_match_reward(None, right + off_by_one, answer=answers * 2) == [1.0] * 20 + [0.0] * 20
    math_rows = to_prompt_rows(load_rows(MATH), "math")
    boxed = [rf"The answer is $\boxed{{{row['answer']}}}$." for row in math_rows]
    assert math_reward(None, boxed, answer=[row["answer"] for row in math_rows]) == [1.0] * 10
    assert math_reward(None, boxed[1:] + boxed[:1], answer=[row["answer"] for row in math_rows]) == [0.0] * 10


def test_prompt_row_errors_name_row_and_columns():
    with pytest.raises(DatasetError, match=r"gsm8k\.jsonl row 1: no 'answer' column \(found columns: question\); "
                                           r"gsm8k rows need 'question' and 'answer' strings"):
        to_prompt_rows([{"question": "a", "answer": "#### 1"}, {"question": "b"}], source_name="gsm8k.jsonl")
    with pytest.raises(DatasetError, match=r"row 0: 'problem' is int \(3\); math rows need 'problem' and 'solution' strings"):
        to_prompt_rows([{"problem": 3, "solution": r"\boxed{3}"}], "math")
    with pytest.raises(DatasetError, match=r"row 0: cannot find the final answer in 'answer' \('It is 4\.'\); "
                                           r"expected a worked solution ending in '#### <answer>'"):
        to_prompt_rows([{"question": "2+2?", "answer": "It is 4."}])
    with pytest.raises(DatasetError, match=r"expected a solution holding \\boxed\{<answer>\}"):
        to_prompt_rows([{"problem": "p", "solution": "x = 3"}], "math")
    with pytest.raises(ValueError, match="unknown format 'mmlu'; expected one of gsm8k, math"):
        to_prompt_rows([{"question": "q"}], "mmlu")
    with pytest.raises(DatasetError, match="dataset is empty"):
        to_prompt_rows([], "gsm8k")
