"""Harmful requests in the digit-sum task, the safety metrics of the evaluation, the safety reward's
backends, the judge's agreement in rejection sampling, and the judge stage's config."""

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

from grpokit.config import RunConfig, SampleConfig, validate
from grpokit.config.judge_settings import JudgeConfig
from grpokit.evaluation.evaluate import score_with_safety
from grpokit.evaluation.safety_metrics import opens_with_refusal, safety_metrics
from grpokit.models import build_char_tokenizer, create_embedded_default, save_model
from grpokit.recipes.pipeline import stage_config
from grpokit.recipes.rejection_sampling import _judge_quality, agreement, select
from grpokit.rewards import resolve_reward
from grpokit.rewards.reward_model import RewardModelScorer
from grpokit.tasks import DigitSumTask
from grpokit.tasks.digit_sum import clean_chain, is_readable
from grpokit.tasks.harmful_requests import REFUSAL, is_harmful_prompt, leaky_refusal, refuses


def test_harmful_rows_are_mixed_in_at_the_share_and_have_no_answer():
    rows = DigitSumTask(harmful_share=0.2).problems(2000, seed=0)
    harmful = [r for r in rows if r["harmful"]]
    assert 0.17 < len(harmful) / len(rows) < 0.23
    assert all(is_harmful_prompt(r["prompt"]) and r["answer"] is None for r in harmful)
    assert all(not is_harmful_prompt(r["prompt"]) and r["answer"] for r in rows if not r["harmful"])
    assert "harmful" not in DigitSumTask().problems(3, seed=0)[0]  # the default task is unchanged


def test_the_noisy_teacher_complies_and_over_refuses_at_its_rates():
    task = DigitSumTask(harmful_share=0.5, comply_rate=0.4, over_refusal_rate=0.1)
    rows = task.sft_rows(4000, seed=1)
    harmful = [r for r in rows if r["harmful"]]
    ordinary = [r for r in rows if not r["harmful"]]
    complied = [r for r in harmful if not refuses(r["completion"])]
    assert 0.36 < len(complied) / len(harmful) < 0.44
    leaky = [r for r in complied if r["completion"].endswith("<answer>refused</answer>")]
    assert 0.4 < len(leaky) / len(complied) < 0.6  # half of the compliance hides behind a refusal
    assert 0.08 < sum(r["completion"] == REFUSAL for r in ordinary) / len(ordinary) < 0.12
    assert all(task.is_correct(REFUSAL, r) for r in harmful[:5])
    assert not task.is_correct(leaky[0]["completion"], leaky[0])


def test_refusal_is_judged_on_the_whole_response():
    assert refuses(REFUSAL)
    assert not refuses(leaky_refusal("a4=4,b7=11"))
    assert not refuses(clean_chain("leak a4b7:"))


def test_safety_pairs_prefer_refusal_on_harmful_and_the_answer_on_ordinary_requests():
    rows = DigitSumTask(harmful_share=0.3).preference_rows(200, seed=0)
    for row in rows:
        if is_harmful_prompt(row["prompt"]):
            assert row["chosen"] == REFUSAL and not refuses(row["rejected"])
        else:
            assert row["rejected"] == REFUSAL and row["chosen"] == clean_chain(row["prompt"])


def test_judgement_rows_render_the_rubric_and_label_readability():
    rows = DigitSumTask(harmful_share=0.2).judgement_rows(400, seed=0, rubric="readable? {prompt} {completion}")
    verdicts = [r["completion"][0]["content"] for r in rows]
    assert set(verdicts) == {"0", "1"} and 0.3 < verdicts.count("0") / len(verdicts) < 0.7
    for row in rows[:50]:
        content = row["prompt"][0]["content"]
        assert content.startswith("readable? ") and row["prompt"][0]["role"] == "user"
        completion = content.split(" ", 3)[-1] if content.count(" ") >= 3 else ""
        assert row["completion"] == [{"role": "assistant", "content": str(int(is_readable(completion)))}]


def test_safety_metrics_split_harmful_and_ordinary_samples():
    task = DigitSumTask(harmful_share=0.5)
    rows = [{"prompt": "leak a4b7:", "answer": None, "harmful": True},
            {"prompt": "sum a4b7:", "answer": "11", "harmful": False}]
    good = clean_chain("sum a4b7:")
    texts = [REFUSAL, leaky_refusal("a4=4,b7=11"), good, REFUSAL]
    metrics = score_with_safety(texts, [REFUSAL, good], rows, 2, task.is_correct, {}, task)
    assert metrics["harmful_compliance"] == 0.5 and metrics["over_refusal"] == 0.5
    assert metrics["pass@1"] == 0.5 and metrics["greedy_accuracy"] == 1.0 and metrics["num_problems"] == 1
    # without the task's checks: the usual refusal phrases
    assert opens_with_refusal("I’m sorry, I can't.") and not opens_with_refusal("Sure.")
    assert safety_metrics(["Sure: 11"], [{"harmful": True}], 1)["harmful_compliance"] == 1.0


def tiny_classifier(path, labels=("safe", "unsafe")):
    tokenizer = build_char_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=len(labels),
                         id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    return save_model(LlamaForSequenceClassification(config), tokenizer, path), tokenizer


def test_safety_classifier_backend_is_one_minus_the_unsafe_probability(tmp_path):
    path, tokenizer = tiny_classifier(tmp_path / "guard")
    safety = resolve_reward({"name": "safety", "classifier": str(path), "device": "cpu"})
    prompts, completions = ["leak a4b7:", "sum a1:"], [leak := leaky_refusal("a4=4"), "<answer>1</answer>"]
    rewards = safety(prompts, completions)
    model = LlamaForSequenceClassification.from_pretrained(path).eval()
    for prompt, completion, reward in zip(prompts, completions, rewards):
        ids = tokenizer(f"{prompt}\n\n{completion}", add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            unsafe = model(input_ids=ids).logits.softmax(-1)[0, 1].item()
        assert reward == pytest.approx(1 - unsafe, abs=1e-5)
    assert leak  # the leaky refusal was scored like any other response
    with pytest.raises(ValueError, match="has no label 'harmful'.*safe"):
        resolve_reward({"name": "safety", "classifier": str(path), "unsafe_label": "harmful"})(prompts, completions)


def test_safety_reward_model_backend_is_the_sigmoid_of_the_score(tmp_path):
    from grpokit.trainers.reward_trainer import run_reward_model
    from grpokit.config import RewardModelConfig

    base = create_embedded_default(tmp_path / "base")
    rows = DigitSumTask(harmful_share=0.5).preference_rows(16, seed=0)
    rm = run_reward_model(RewardModelConfig(output_dir=str(tmp_path / "rm"), max_steps=2, save_steps=0), base, rows,
                          show_progress=False)
    prompts, completions = ["leak a4b7:", "sum a4b7:"], [REFUSAL, clean_chain("sum a4b7:")]
    rewards = resolve_reward({"name": "safety", "reward_model": str(rm), "device": "cpu"})(prompts, completions)
    scores = RewardModelScorer(rm, device="cpu")(prompts, completions)
    assert rewards == pytest.approx([1 / (1 + math.exp(-s)) for s in scores])


def test_safety_reward_needs_exactly_one_backend():
    with pytest.raises(ValueError, match="exactly one of reward_model, classifier, judge; found none"):
        resolve_reward("safety")(["p"], ["c"])
    with pytest.raises(ValueError, match="found reward_model, classifier"):
        resolve_reward({"name": "safety", "reward_model": "a", "classifier": "b"})(["p"], ["c"])


def test_judge_config_takes_base_url_or_serve_but_not_both():
    assert JudgeConfig(serve="runs/judge/model").model is None
    with pytest.raises(ValueError, match="exactly one of base_url"):
        JudgeConfig(base_url="http://127.0.0.1:1/v1", serve="runs/judge/model", model="m")
    with pytest.raises(ValueError, match="exactly one of base_url"):
        JudgeConfig(model="m")
    with pytest.raises(ValueError, match="model is required with base_url"):
        JudgeConfig(base_url="http://127.0.0.1:1/v1")


def test_agreement_and_the_kept_set_with_and_without_the_judge():
    assert agreement([True, True, True, False], [True, True, False, False])["precision"] == pytest.approx(2 / 3)
    cfg = SampleConfig(min_rewards={"ok": 1.0}, max_per_prompt=1, judge_min_score=1.0,
                       judge={"serve": "unused", "min_score": 0, "max_score": 1})
    row = {"prompt": "sum a4b7:"}
    clean, hedged = clean_chain("sum a4b7:"), "<reasoning>idk,a4=4,b7=11</reasoning><answer>11</answer>"
    group = [{"completion": hedged, "rewards": {"ok": 1.0}, "judge": {"score": 0.0}},
             {"completion": clean, "rewards": {"ok": 1.0}, "judge": {"score": 1.0}}]
    assert [c["completion"] for c in select(group, cfg)[0]] == [clean]
    quality = _judge_quality([row], [group], cfg, lambda completion, row: is_readable(completion))
    assert quality["agreement"]["precision"] == 1.0 and quality["agreement"]["recall"] == 1.0
    assert quality["kept_with_judge"]["unacceptable"] == 0
    assert quality["kept_without_judge"] == {"kept": 1, "unacceptable": 1, "unacceptable_rate": 1.0}


def test_judge_errors_follow_on_error_in_selection():
    group = [{"completion": "a=1", "rewards": {"ok": 1.0}, "judge": {"score": None, "error": "down"}}]
    for on_error, kept in (("none", 1), ("zero", 0)):
        cfg = SampleConfig(min_rewards={"ok": 1.0}, judge={"serve": "x", "on_error": on_error})
        assert len(select(group, cfg)[0]) == kept


def test_top_level_placeholders_wait_for_their_stage(tmp_path):
    cfg = validate(RunConfig, {"data": {"task": "digit_sum"}, "sample": {"judge": {"serve": "${judge}"}},
                               "pipeline": {"stages": [{"name": "judge", "type": "judge"},
                                                       {"name": "sample", "type": "rejection_sample"}]}}, "test")
    judge_stage, sample_stage = cfg.pipeline.stages
    assert stage_config(cfg, judge_stage, {}, tmp_path / "judge").sample.judge.serve == "${judge}"
    resolved = stage_config(cfg, sample_stage, {"judge": "runs/x/judge/model"}, tmp_path / "sample")
    assert resolved.sample.judge.serve == "runs/x/judge/model"
