"""Rule rewards: tagged format, exact/numeric/math answers, length, language, and YAML-style specs."""

import functools
import threading
from pathlib import Path

import pytest
import yaml

from grpokit.rewards import resolve_reward, reward_name, score_completions
from grpokit.rewards.language import language_consistency_reward, target_share, words
from grpokit.rewards.length import (length_penalty, length_penalty_reward, soft_overlong_penalty,
                                    soft_overlong_reward)
from grpokit.rewards.math_answers import math_reward, reference_text
from grpokit.answers import candidate_answer, parse_number
from grpokit.rewards.rules import exact_match_reward, format_reward, numeric_match_reward
from grpokit.rewards.lookup import reward_options

EXAMPLE_CONFIG = Path(__file__).parents[1] / "examples" / "configs" / "gsm8k_qwen.yaml"


def chat(text):
    return [{"role": "assistant", "content": text}]


# ---------------------------------------------------------------------------------- format


def test_format_defaults_unchanged():
    completions = ["<reasoning>4+7=11</reasoning>\n<answer>11</answer>", "  <reasoning>r</reasoning><answer>1</answer>\n",
                   "<answer>11</answer>", "<reasoning>r</reasoning><answer>1</answer> trailing",
                   "<think>r</think><answer>1</answer>", chat("<reasoning>r</reasoning><answer>1</answer>")]
    assert format_reward(["p"] * 6, completions) == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0]


def test_format_with_r1_tags_allows_math_inside_spans():
    completions = ["<think>\nif x < 3 then 2x < 6\n</think>\n<answer>6</answer>",
                   "<reasoning>r</reasoning><answer>1</answer>",
                   "<think>a</think><answer>1</answer><answer>2</answer>",  # a second answer is not the format
                   "<think>a <think>b</think><answer>1</answer>"]
    assert format_reward(["p"] * 4, completions, reasoning_tag="think") == [1.0, 0.0, 0.0, 0.0]


def test_format_rejects_bad_tag_names():
    with pytest.raises(ValueError, match="XML-like names"):
        format_reward(["p"], ["x"], reasoning_tag="th ink")


# ------------------------------------------------------------------------------- exact / numeric


def test_candidate_answer_prefers_tag_then_box_then_text():
    assert candidate_answer(r"\boxed{1} <answer> 2 </answer>") == "2"
    assert candidate_answer(r"first \boxed{1}, then \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert candidate_answer(chat(" 42 ")) == "42"
    assert candidate_answer("<final>7</final>", answer_tag="final") == "7"


def test_exact_match():
    completions = ["<answer> Paris </answer>", "<answer>paris</answer>", "Paris", r"\boxed{Paris}", "<answer>Paris</answer>"]
    assert exact_match_reward(["p"] * 5, completions, answer=["Paris", "Paris", " Paris ", "Paris", None]) == \
        [1.0, 0.0, 1.0, 1.0, None]
    assert exact_match_reward(["p"], ["<answer>x</answer>"]) == [None]  # no answer column


@pytest.mark.parametrize("text, value", [
    ("42", 42.0), ("1,234", 1234.0), ("-3.5", -3.5), ("3/4", 0.75), ("-1/8", -0.125), ("50%", 50.0),
    ("$1,250.50", 1250.5), ("-$5", -5.0), (".5", 0.5), ("2e3", 2000.0), (7, 7.0),
    ("12,34", None), ("x = 5", None), ("five", None), ("1/0", None), ("", None), (None, None), (True, None),
])
def test_parse_number(text, value):
    assert parse_number(text) == value


def test_numeric_match_with_tolerances():
    completions = ["<answer>1,234</answer>", "<answer>0.333</answer>", "<answer>0.333</answer>", "<answer>3/4</answer>",
                   "<answer>seven</answer>", "<answer>5</answer>", "The answer is 9"]
    answers = ["1234", "1/3", "1/3", "0.75", "7", "not a number", "9"]
    assert numeric_match_reward(["p"] * 7, completions, answer=answers) == [1.0, 0.0, 0.0, 1.0, 0.0, None, 0.0]
    # |0.333 - 1/3| = 3.3e-4: inside abs_tol 1e-3; relative error 1e-3, inside rel_tol 2e-3, outside 5e-4
    assert numeric_match_reward(["p"], ["<answer>0.333</answer>"], answer=["1/3"], abs_tol=1e-3) == [1.0]
    assert numeric_match_reward(["p"], ["<answer>0.333</answer>"], answer=["1/3"], rel_tol=2e-3) == [1.0]
    assert numeric_match_reward(["p"], ["<answer>0.333</answer>"], answer=["1/3"], rel_tol=5e-4) == [0.0]


def test_numeric_match_reads_gsm8k_solution_as_reference():
    assert numeric_match_reward(["p", "p"], ["<answer>2280</answer>", "<answer>228</answer>"],
                                answer=["570 * 4 = 2280\n#### 2,280"] * 2) == [1.0, 0.0]


# ------------------------------------------------------------------------------------- math


def test_math_equivalences():
    cases = [  # (completion, reference, reward)
        ("<answer>0.5</answer>", r"\frac{1}{2}", 1.0),
        (r"<answer>\frac{1}{2}</answer>", "0.5", 1.0),
        (r"We get \boxed{3}.", "3", 1.0),
        (r"<answer>\boxed{3}</answer>", "3", 1.0),
        (r"<answer>\dfrac{6}{8}</answer>", "3/4", 1.0),
        (r"<answer>2\sqrt{2}</answer>", r"\sqrt{8}", 1.0),
        ("<answer>x = 5</answer>", "5", 1.0),
        (r"<answer>(4, \infty)</answer>", r"(4, \infty)", 1.0),
        ("<answer>1,234</answer>", "1234", 1.0),
        (r"so the answer is $\frac{1}{3}$", r"\frac{1}{3}", 1.0),  # no tag, no box: math-verify reads the text
        ("<answer>0.4</answer>", r"\frac{1}{2}", 0.0),
        (r"\boxed{4}", "3", 0.0),
        (r"<answer>[4, \infty)</answer>", r"(4, \infty)", 0.0),
        (r"<answer>\sqrt{2}</answer>", "2", 0.0),
        ("<answer>banana</answer>", "7", 0.0),
        ("<answer></answer>", "7", 0.0),
    ]
    completions, references, expected = zip(*cases)
    assert math_reward(["p"] * len(cases), list(completions), answer=list(references)) == list(expected)


def test_math_reference_forms_and_missing_reference():
    completions = ["<answer>42</answer>", r"<answer>\frac{1}{2}</answer>", "<answer>1</answer>", "<answer>1</answer>"]
    references = ["6 * 7 = 42\n#### 42", r"Halving gives $\boxed{\frac{1}{2}}$.", None, "   "]
    assert math_reward(["p"] * 4, completions, answer=references) == [1.0, 1.0, None, None]
    assert math_reward(["p"], ["<answer>1</answer>"]) == [None]  # no answer column
    assert reference_text(r"\boxed{\frac{\sqrt{3}}{2}}") == r"\frac{\sqrt{3}}{2}"


def test_math_with_chat_completions_and_custom_tag():
    assert math_reward(["p", "p"], [chat("<final>0.25</final>"), chat("<final>0.5</final>")],
                       answer=[r"\frac{1}{4}"] * 2, answer_tag="final") == [1.0, 0.0]


def test_math_works_outside_the_main_thread():
    """math-verify's SIGALRM timeout raises in other threads; the reward turns it off there."""
    results = []
    worker = threading.Thread(target=lambda: results.append(
        math_reward(["p", "p"], [r"\boxed{\frac{1}{2}}", r"\boxed{2}"], answer=["0.5", "0.5"])))
    worker.start()
    worker.join()
    assert results == [[1.0, 0.0]]


# ------------------------------------------------------------------------------------ length


def test_soft_overlong_three_regions():
    # L_max = 512, L_cache = 128: no punishment up to 384 tokens, linear to -1 at 512, -1 beyond
    assert [soft_overlong_penalty(n, 512, 128) for n in (0, 100, 384)] == [0.0, 0.0, 0.0]
    assert [soft_overlong_penalty(n, 512, 128) for n in (385, 416, 480, 512)] == [-1 / 128, -0.25, -0.75, -1.0]
    assert [soft_overlong_penalty(n, 512, 128) for n in (513, 10_000)] == [-1.0, -1.0]


def test_soft_overlong_reward_counts_completion_tokens():
    ids = [[7] * 10, [7] * 17, [7] * 19, [7] * 25]
    assert soft_overlong_reward(["p"] * 4, ["a", "b", "c", "d"], completion_ids=ids, max_length=20,
                                cache_length=4) == [0.0, -0.25, -0.75, -1.0]


def test_length_rewards_reject_bad_settings():
    with pytest.raises(ValueError, match="cache_length < max_length"):
        soft_overlong_penalty(5, max_length=10, cache_length=10)
    with pytest.raises(ValueError, match="target_length < max_length"):
        length_penalty(5, target_length=10, max_length=10)


def test_length_penalty_linear():
    ids = [[1] * n for n in (50, 100, 150, 250, 300, 301)]
    assert length_penalty_reward(["p"] * 6, ["x"] * 6, completion_ids=ids, target_length=100, max_length=300) == \
        [0.0, 0.0, -0.25, -0.75, -1.0, -1.0]


# ---------------------------------------------------------------------------------- language


def test_words_split_letters_and_cjk_characters():
    assert words("Let x=3: 3x+1 = 10, 所以 y.") == ["Let", "x", "x", "所", "以", "y"]
    assert words("naïve café") == ["naïve", "café"]


def test_language_consistency_shares():
    completions = [
        "<reasoning>add the two numbers</reasoning><answer>4</answer>",     # 4/4
        "<reasoning>first 加上 two</reasoning><answer>4</answer>",          # first, 加, 上, two -> 2/4
        "<reasoning>сумма of two</reasoning><answer>4</answer>",            # 2/3
        "<reasoning>2 + 2 = 4</reasoning><answer>four</answer>",            # no words in the reasoning
        "no tags here, так что whole text",                                 # 5/7
    ]
    assert language_consistency_reward(["p"] * 5, completions) == [1.0, 0.5, 2 / 3, None, 5 / 7]


def test_language_consistency_other_languages_and_tags():
    assert language_consistency_reward(["p", "p"], ["<think>先加 two</think>", "<think>先加</think>"],
                                       language="zh", reasoning_tag="think") == [2 / 3, 1.0]
    assert target_share("ひらがな と 漢字", frozenset({"CJK", "HIRAGANA", "KATAKANA"})) == 1.0
    with pytest.raises(ValueError, match="unknown language 'klingon'; expected one of en, latin"):
        language_consistency_reward(["p"], ["x"], language="klingon")


# -------------------------------------------------------------------- rewards from YAML mappings


def test_mapping_binds_options_and_keeps_a_readable_name():
    reward = resolve_reward({"name": "soft_overlong", "max_length": 20, "cache_length": 4})
    assert isinstance(reward, functools.partial)
    assert reward_name(reward) == "soft_overlong"  # the registered name, as written in YAML
    assert reward(["p"], ["x"], completion_ids=[[1] * 18]) == [-0.5]


def test_mapping_without_options_is_the_function_itself():
    assert resolve_reward({"name": "format"}) is format_reward
    assert resolve_reward({"name": "grpokit.rewards.rules:exact_match_reward"}) is exact_match_reward


def test_alias_names_two_configurations_of_one_reward():
    specs = [{"name": "format", "alias": "format_r1", "reasoning_tag": "think"}, "format"]
    batch = score_completions(specs, prompts=["p"], completions=["<think>a</think><answer>1</answer>"],
                              completion_ids=[[1]])
    assert batch.names == ["format_r1", "format"]
    assert batch.per_func.tolist() == [[1.0, 0.0]]


def test_unknown_option_is_an_error_at_resolve_time():
    with pytest.raises(ValueError) as info:
        resolve_reward({"name": "soft_overlong", "max_length": 512, "cache_len": 128}, "rewards[2]")
    assert str(info.value) == ("rewards[2]: reward 'soft_overlong' got unknown option(s) 'cache_len' "
                               "('cache_len': did you mean 'cache_length'?); it accepts: max_length, "
                               "cache_length (and 'alias' for the metric name)")


def test_missing_required_option_is_an_error_at_resolve_time():
    with pytest.raises(ValueError, match=r"reward 'length_penalty' needs option\(s\) 'max_length'; write it "
                                         r"as a mapping, \{name: length_penalty, max_length: ...\} "
                                         r"\(it accepts: target_length, max_length\)"):
        resolve_reward({"name": "length_penalty", "target_length": 100})


def test_mapping_needs_a_name():
    with pytest.raises(ValueError, match=r"needs a 'name' key .*\(found keys: max_length\)"):
        resolve_reward({"max_length": 512})
    with pytest.raises(ValueError, match="alias 3; expected a non-empty string"):
        resolve_reward({"name": "format", "alias": 3})
    with pytest.raises(ValueError, match="expected a reward name, 'package.module:function' or a mapping"):
        resolve_reward(3)


def test_reward_options_lists_named_keywords_and_declared_ones():
    def scaled(prompts, completions, completion_ids=None, *, scale=1.0, **kwargs):
        return [scale] * len(completions)

    scaled.reward_options = ("offset",)
    assert reward_options(scaled) == ["scale", "offset"]
    assert reward_options(numeric_match_reward) == ["answer", "answer_tag", "rel_tol", "abs_tol"]


def test_example_gsm8k_config_rewards_resolve_and_score():
    rewards = yaml.safe_load(EXAMPLE_CONFIG.read_text())["rewards"]
    funcs = [resolve_reward(spec) for spec in rewards]
    completions = ["<reasoning>6 * 7 = 42</reasoning>\n<answer>42</answer>", "<answer>41</answer>"]
    batch = score_completions(funcs, prompts=[[{"role": "user", "content": "6 times 7?"}]], completions=completions,
                              completion_ids=[[1] * 400, [1] * 10], columns={"answer": ["42"]})
    assert batch.names == ["format", "math", "soft_overlong"]
    # 400 tokens with L_max 512, L_cache 128: (384 - 400) / 128 = -0.125
    assert batch.per_func.tolist() == [[1.0, 1.0, -0.125], [0.0, 0.0, 0.0]]
    assert batch.total.tolist() == [1.875, 0.0]
