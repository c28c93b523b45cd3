"""Property-based tests: the text parsers and rewards never crash on arbitrary text and stay
within their declared bounds; the config loader returns a RunConfig or raises ConfigError."""

from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from grpokit.rewards.step_scores import split_steps
from grpokit.config import ConfigError, RunConfig, Section, load_config
from grpokit.answers import boxed_answer, gsm8k_answer
from grpokit.rewards.judge import normalise_score, parse_score
from grpokit.rewards.language import LANGUAGE_SCRIPTS, language_consistency_reward, target_share, words
from grpokit.rewards.length import (length_penalty, length_penalty_reward, soft_overlong_penalty,
                                    soft_overlong_reward)
from grpokit.rewards.math_answers import math_reward
from grpokit.answers import answers_match, extract_answer, is_well_formatted
from grpokit.rewards.rules import correctness_reward, exact_match_reward, format_reward, numeric_match_reward

FAST = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# Pieces that reach the parsers' interesting branches: tags, boxes, GSM8K markers, numbers
# (some too large for a float), signs and separators, letters of several scripts.
FRAGMENTS = ["<answer>", "</answer>", "<reasoning>", "</reasoning>", "<think>", "</think>", "<", ">",
             "\\boxed{", "\\fbox{", "{", "}", "\\{", "\\}", "\\", "####", "SCORE: ", "score=", "$", "%",
             "/", ",", ".", "-", "+", "e", "\n", " ", "\t", "x", "加", "я", "ω", "😀", "\\frac{1}{2}"]
numbers = st.one_of(st.integers(-10**6, 10**6), st.integers(0, 10**400), st.floats(allow_nan=True))
digit_runs = st.integers(1, 5_000).map(lambda n: "7" * n)  # past 4,300 digits int() refuses the string
fractions = st.tuples(st.one_of(numbers.map(str), digit_runs), st.integers(0, 999)).map(lambda ab: f"{ab[0]}/{ab[1]}")
tagged_text = st.lists(st.one_of(st.sampled_from(FRAGMENTS), numbers.map(str), fractions, digit_runs,
                                 st.text(max_size=4)), max_size=20).map("".join)
any_text = st.one_of(st.text(), tagged_text)
completion = st.one_of(any_text, any_text.map(lambda t: [{"role": "assistant", "content": t}]))
reference = st.one_of(st.none(), any_text, numbers)


# ----------------------------------------------------------------------------- rules


@FAST
@given(any_text)
def test_extract_answer_is_a_stripped_span_without_tags(text):
    found = extract_answer(text)
    assert found is None or (found == found.strip() and "<" not in found and found in text)


@FAST
@given(any_text)
def test_a_well_formatted_completion_has_an_answer(text):
    assert is_well_formatted(text) in (True, False)
    if is_well_formatted(text):
        assert extract_answer(text) is not None


@FAST
@given(st.one_of(st.none(), any_text), reference)
@example("0", 10**400)  # float(10**400) overflows
def test_answers_match_is_a_bool(predicted, ref):
    assert answers_match(predicted, ref) in (True, False)


tag_names = st.from_regex(r"[A-Za-z_][\w.-]{0,8}", fullmatch=True)


@FAST
@given(st.lists(completion, max_size=4), tag_names, tag_names)
def test_format_reward_is_zero_or_one(completions, reasoning_tag, answer_tag):
    rewards = format_reward(["p"] * len(completions), completions, reasoning_tag=reasoning_tag, answer_tag=answer_tag)
    assert len(rewards) == len(completions) and set(rewards) <= {0.0, 1.0}


@FAST
@given(st.lists(st.tuples(completion, reference), max_size=4))
@example([("", 10**400)])  # a reference too large for a float
@example([("1" * 400 + "/1", 0)])  # a fraction too large for a float
@example([("7" * 5000 + "/1", 0)])  # int() refuses strings past 4,300 digits
def test_answer_rewards_are_zero_one_or_none_exactly_where_the_reference_is_missing(pairs):
    completions, answers = [c for c, _ in pairs], [a for _, a in pairs]
    prompts = ["p"] * len(pairs)
    for reward in (correctness_reward, exact_match_reward, numeric_match_reward):
        values = reward(prompts, completions, answer=answers)
        assert len(values) == len(pairs)
        assert all(v in (0.0, 1.0) or (v is None and reward is numeric_match_reward) or (v is None and a is None)
                   for v, a in zip(values, answers)), reward.__name__
        assert all(v is None for v, a in zip(values, answers) if a is None), reward.__name__


@settings(max_examples=40, deadline=timedelta(seconds=30), database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(completion, reference), min_size=1, max_size=2))
def test_math_reward_is_zero_one_or_none(pairs):
    # math-verify's own timeout bounds each parse and comparison (pytest runs in the main thread)
    values = math_reward(["p"] * len(pairs), [c for c, _ in pairs], answer=[a for _, a in pairs], timeout_seconds=3)
    assert len(values) == len(pairs) and set(values) <= {0.0, 1.0, None}


# ---------------------------------------------------------------------------- length

lengths = st.integers(0, 10_000)


@FAST
@given(lengths, lengths, st.integers(1, 5_000), st.integers(1, 5_000))
def test_soft_overlong_is_between_minus_one_and_zero_and_never_rises_with_length(a, b, cache, extra):
    max_length = cache + extra  # 1 <= cache_length < max_length
    short, long = sorted((a, b))
    low, high = (soft_overlong_penalty(n, max_length, cache) for n in (long, short))
    assert -1.0 <= low <= high <= 0.0
    assert soft_overlong_reward(["p"], ["c"], completion_ids=[[0] * a], max_length=max_length,
                                cache_length=cache) == [soft_overlong_penalty(a, max_length, cache)]


@FAST
@given(lengths, lengths, st.integers(0, 5_000), st.integers(1, 5_000))
def test_length_penalty_is_between_minus_one_and_zero_and_never_rises_with_length(a, b, target, extra):
    short, long = sorted((a, b))
    low, high = (length_penalty(n, target, target + extra) for n in (long, short))
    assert -1.0 <= low <= high <= 0.0
    assert length_penalty_reward(["p"], ["c"], completion_ids=[[0] * a], target_length=target,
                                 max_length=target + extra) == [length_penalty(a, target, target + extra)]


@FAST
@given(lengths, st.integers(-100, 100), st.integers(-100, 100))
def test_length_rewards_reject_impossible_settings_with_a_value_error(n, first, second):
    if not 1 <= second < first:
        with pytest.raises(ValueError):
            soft_overlong_penalty(n, max_length=first, cache_length=second)
    if not 0 <= second < first:
        with pytest.raises(ValueError):
            length_penalty(n, target_length=second, max_length=first)


# -------------------------------------------------------------------------- language


@FAST
@given(any_text)
def test_words_are_runs_of_letters(text):
    assert all(word and all(char.isalpha() for char in word) for word in words(text))


@FAST
@given(st.lists(completion, max_size=3), st.sampled_from(sorted(LANGUAGE_SCRIPTS)), tag_names)
def test_language_consistency_is_a_share(completions, language, tag):
    rewards = language_consistency_reward(["p"] * len(completions), completions, language=language, reasoning_tag=tag)
    assert len(rewards) == len(completions)
    assert all(r is None or 0.0 <= r <= 1.0 for r in rewards)


@FAST
@given(any_text)
def test_target_share_is_none_exactly_without_words(text):
    share = target_share(text, LANGUAGE_SCRIPTS["en"])
    assert (share is None) == (not words(text))


# ------------------------------------------------------------------- dataset answers

no_box = any_text.filter(lambda t: "\\boxed{" not in t and "\\fbox{" not in t)
plain = st.text(alphabet=st.characters(blacklist_characters="{}\\"), max_size=10)


@FAST
@given(st.one_of(any_text, numbers, st.none()))
def test_gsm8k_answer_is_none_or_a_nonempty_answer_without_commas(text):
    found = gsm8k_answer(text)
    assert found is None or (found.strip() and "," not in found)
    if not isinstance(text, str) or "####" not in text:
        assert found is None


@FAST
@given(st.one_of(any_text, numbers, st.none()))
def test_boxed_answer_is_none_or_part_of_the_text(text):
    found = boxed_answer(text)
    assert found is None or found in text


@FAST
@given(no_box, plain, no_box)
def test_boxed_answer_finds_the_only_box(before, content, after):
    assert boxed_answer(before + "\\boxed{" + content + "}" + after) == content


# ---------------------------------------------------------------------------- judge


@FAST
@given(any_text, st.booleans())
def test_parse_score_is_none_or_a_float(reply, fallback):
    score = parse_score(reply, fallback_to_last_number=fallback)
    assert score is None or isinstance(score, float)


@FAST
@given(st.floats(allow_nan=False), st.floats(-1e6, 1e6), st.floats(1e-6, 1e6))
def test_normalise_score_is_within_zero_and_one(score, low, span):
    assert 0.0 <= normalise_score(score, low, low + span) <= 1.0


# ------------------------------------------------------------------- process steps


@FAST
@given(any_text, st.sampled_from(["\n", ",", "\n\n", ". ", "ab", "aa"]))
def test_split_steps_are_the_nonblank_pieces_between_separators(text, separator):
    spans = split_steps(text, separator)
    assert [text[s:e] for s, e in spans] == [piece for piece in text.split(separator) if piece.strip()]
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))


# --------------------------------------------------------------------------- config


def _field_names(model: type[BaseModel]) -> set[str]:
    names = set()
    for name, info in model.model_fields.items():
        names.add(name)
        if isinstance(info.annotation, type) and issubclass(info.annotation, Section):
            names |= _field_names(info.annotation)
    return names


CONFIG_KEYS = sorted(_field_names(RunConfig))
config_key = st.one_of(st.sampled_from(CONFIG_KEYS), st.text(max_size=6))
scalar = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(), st.text(max_size=10))
config_tree = st.recursive(scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                           st.dictionaries(config_key, inner, max_size=4)),
                           max_leaves=12)
dotted_path = st.lists(config_key, min_size=1, max_size=4).map(".".join)
override = st.one_of(st.tuples(dotted_path, st.one_of(any_text, config_tree.map(yaml.safe_dump))).map("=".join),
                     any_text)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("configs") / "run.yaml"


def load_or_config_error(path, overrides=()):
    try:
        assert isinstance(load_config(path, list(overrides)), RunConfig)
    except ConfigError:
        pass


@FAST
@given(text=any_text)
@example(text='a: "')  # unclosed quote
@example(text="!0 x")  # unknown tag
@example(text="1" + "0" * 4300)  # PyYAML's int() refuses strings past 4,300 digits
def test_any_yaml_text_gives_a_config_or_a_config_error(config_file, text):
    config_file.write_text(text)
    load_or_config_error(config_file)


@FAST
@given(tree=st.dictionaries(config_key, config_tree, max_size=5))
def test_any_nested_mapping_gives_a_config_or_a_config_error(config_file, tree):
    config_file.write_text(yaml.safe_dump(tree))
    load_or_config_error(config_file)


@FAST
@given(overrides=st.lists(override, max_size=3))
@example(overrides=['grpo.beta="'])  # a value that is not YAML
@example(overrides=["grpo.beta=1" + "0" * 4300])  # an integer PyYAML cannot read
@example(overrides=["action=[]", "action.action="])  # a key set inside a list
def test_any_dotted_overrides_give_a_config_or_a_config_error(overrides):
    load_or_config_error(None, overrides)
