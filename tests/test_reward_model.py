"""Reward models: Bradley–Terry training of the embedded default on a synthetic preference, the
saved model as a reward function, padding invariance, chat rendering and row validation."""

import functools
import json
import random

import pytest
import torch
import yaml
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, LlamaForSequenceClassification,
                          Qwen2Config, Qwen2ForCausalLM)

from grpokit.data import DatasetError
from grpokit.models import ModelLoadError, create_embedded_default, save_model
from grpokit.rewards import resolve_reward, score_completions
from grpokit.rewards.reward_model import RewardModelScorer, cached_scorer, encode, right_pad, scored_text
from grpokit.trainers.reward_trainer import (RewardModelConfig, RewardModelTrainer, encode_pair,
                                           load_preference_model, run_reward_model, validate_preference_rows)

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = dict(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64)


def preference_rows(count: int, seed: int) -> list[dict]:
    """Chosen: lowercase letters; rejected: the same letters with a forbidden '!' inserted."""
    rng = random.Random(seed)
    word = lambda n: "".join(rng.choice("abcdefghij") for _ in range(n))  # noqa: E731
    rows = []
    for _ in range(count):
        chosen = word(rng.randint(5, 9))
        cut = rng.randint(0, len(chosen))
        rows.append({"prompt": f"q {word(4)}:", "chosen": chosen, "rejected": chosen[:cut] + "!" + chosen[cut:]})
    return rows


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return create_embedded_default(tmp_path_factory.mktemp("rm") / "base")


@pytest.fixture(scope="module")
def trained(base_dir, tmp_path_factory):
    """A reward model trained for 15 steps; returns (summary, output_dir)."""
    out = tmp_path_factory.mktemp("rm") / "run"
    args = RewardModelConfig(output_dir=str(out), learning_rate=1e-3, max_steps=15, max_length=64,
                             per_device_train_batch_size=16, eval_fraction=0.25)
    summary = RewardModelTrainer(str(base_dir), args, preference_rows(160, seed=0)).train(show_progress=False)
    return summary, out


@pytest.fixture(scope="module")
def scorer(trained):
    return RewardModelScorer(trained[1] / "model", device="cpu", batch_size=4)


# ------------------------------------------------------------------------------ training


def test_training_lifts_held_out_pair_accuracy_well_above_chance(trained):
    summary, _ = trained
    assert summary["train_pairs"] == 120 and summary["eval_pairs"] == 40  # 25 % of 160 held out
    assert summary["eval_after"]["accuracy"] >= 0.9
    assert summary["eval_after"]["margin"] > summary["eval_before"]["margin"] + 1.0
    assert summary["final_loss"] < 0.3


def test_run_writes_config_metrics_summary_and_a_loadable_model(trained):
    summary, out = trained
    assert yaml.safe_load((out / "config.yaml").read_text())["eval_fraction"] == 0.25
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == list(range(1, 16))
    assert {"train/loss", "train/accuracy", "train/margin"} <= set(lines[0])
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    model = AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert isinstance(model, LlamaForSequenceClassification) and model.config.num_labels == 1
    assert AutoTokenizer.from_pretrained(out / "model").pad_token == "<pad>"


def test_saved_model_scores_held_out_chosen_above_rejected(scorer):
    rows = preference_rows(30, seed=99)
    prompts = [r["prompt"] for r in rows]
    chosen = scorer(prompts, [r["chosen"] for r in rows])
    rejected = scorer(prompts, [r["rejected"] for r in rows])
    assert sum(c > r for c, r in zip(chosen, rejected)) >= 27


def test_causal_lm_checkpoint_keeps_its_body_under_a_new_score_head(base_dir):
    model = load_preference_model(base_dir, torch.device("cpu"))
    causal = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=1).model
    assert model.config.num_labels == 1 and model.score.out_features == 1
    assert torch.equal(model.model.embed_tokens.weight, causal.embed_tokens.weight)


def test_qwen2_causal_lm_trains_and_saves_as_a_reward_model(char_tokenizer, tmp_path):
    # Qwen2 configs carry no pad id; the trainer takes the tokenizer's so batches can be scored
    config = Qwen2Config(vocab_size=len(char_tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1)
    assert config.pad_token_id is None
    Qwen2ForCausalLM(config).save_pretrained(tmp_path / "qwen")
    args = RewardModelConfig(output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=4,
                             eval_fraction=0.0)
    trainer = RewardModelTrainer(str(tmp_path / "qwen"), args, preference_rows(8, seed=1),
                                 processing_class=char_tokenizer)
    summary = trainer.train(show_progress=False)
    assert summary["eval_before"] is None and summary["eval_after"] is None
    saved = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "model")
    assert type(saved).__name__ == "Qwen2ForSequenceClassification"
    assert saved.config.pad_token_id == char_tokenizer.pad_token_id


def test_lora_run_saves_a_merged_reward_model(base_dir, tmp_path):
    args = RewardModelConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4,
                             use_lora=True, lora_r=4, learning_rate=1e-2, eval_fraction=0.0)
    model_dir = run_reward_model(args, base_dir, preference_rows(8, seed=2), show_progress=False)
    assert model_dir == tmp_path / "model"
    scorer = RewardModelScorer(model_dir, device="cpu")
    assert all(isinstance(s, float) for s in scorer(["q:"], ["abc"]))


# ------------------------------------------------------------------------------- scoring


def test_score_is_the_same_alone_or_next_to_a_longer_row(scorer):
    short, long = "q ab:cde", "q abcd:efghij" * 3
    alone = scorer.score_texts([short])[0]
    assert scorer.score_texts([long, short])[1] == pytest.approx(alone, abs=1e-5)
    ids = scorer.tokenizer(short, add_special_tokens=False)["input_ids"]
    with torch.no_grad():  # no padding at all: the reference score
        unpadded = scorer.model(input_ids=torch.tensor([ids])).logits[0, 0].item()
    assert alone == pytest.approx(unpadded, abs=1e-5)


def test_tokenizer_padding_side_and_batch_size_do_not_change_scores(trained):
    texts = ["q a:b", "q abcdefgh:ijjj", "q abc:d!e", "q ab:" + "c" * 30, "q x:y"]
    reference = RewardModelScorer(trained[1] / "model", device="cpu", batch_size=1).score_texts(texts)
    left = RewardModelScorer(trained[1] / "model", device="cpu", batch_size=3)
    left.tokenizer.padding_side = "left"
    assert left.score_texts(texts) == pytest.approx(reference, abs=1e-5)


def test_rewards_are_scaled_and_shifted_scores_named_reward_model(scorer, trained):
    raw = scorer.score_texts(["q ab:cd"])[0]
    scaled = RewardModelScorer(trained[1] / "model", device="cpu", scale=2.0, shift=-1.0)
    assert scaled(["q ab:"], ["cd"]) == pytest.approx([2.0 * raw - 1.0], abs=1e-5)
    assert scorer.__name__ == "reward_model"


def test_answer_mode_scores_only_the_answer_span(scorer, trained):
    answer_scorer = RewardModelScorer(trained[1] / "model", device="cpu", score_on="answer")
    rewards = answer_scorer(["q a:", "q a:"], ["<reasoning>xyz!</reasoning><answer>bcd</answer>", "bcd"])
    assert rewards[0] == pytest.approx(scorer.score_texts(["q a:bcd"])[0], abs=1e-5)
    assert rewards[1] is None  # no answer span: the reward does not apply


def test_chat_prompts_are_rendered_as_one_conversation(scorer):
    prompt = [{"role": "user", "content": "q ab:"}]
    as_text = scorer.tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": "cd"}],
                                                   tokenize=False)
    assert as_text == "<|user|>q ab:\n<|assistant|>cd<eos>\n"
    wrapped = scorer([prompt], [[{"role": "assistant", "content": "cd"}]])
    assert scorer([prompt], ["cd"]) == wrapped == pytest.approx(scorer.score_texts([as_text]), abs=1e-5)


def test_registered_reward_takes_a_path_and_loads_the_model_once(trained):
    path = str(trained[1] / "model")
    reward = functools.partial(resolve_reward("reward_model"), path=path, device="cpu")
    batch = score_completions([reward], prompts=["q ab:"], completions=["cd", "c!d"],
                              completion_ids=[[1], [2]])
    assert batch.names == ["reward_model"] and batch.per_func.shape == (2, 1)
    before = cached_scorer.cache_info().misses
    reward(["q ab:"], ["cd"])
    assert cached_scorer.cache_info().misses == before
    with pytest.raises(ValueError, match=r"rewards: \[\{name: reward_model, path: runs/rm/model\}\]"):
        resolve_reward("reward_model")(["q"], ["a"])


def test_scorer_refuses_a_directory_that_is_not_a_one_output_classifier(base_dir, tmp_path, char_tokenizer):
    with pytest.raises(ModelLoadError, match=rf"{base_dir}.*LlamaForCausalLM.*num_labels=1"):
        RewardModelScorer(base_dir, device="cpu")
    two_labels = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=2)
    save_model(two_labels, char_tokenizer, tmp_path / "two")
    with pytest.raises(ModelLoadError, match="num_labels=2"):
        RewardModelScorer(tmp_path / "two", device="cpu")
    with pytest.raises(ModelLoadError, match="num_labels=2; a reward model has num_labels=1"):
        load_preference_model(tmp_path / "two", torch.device("cpu"))


# ------------------------------------------------------------------------------ encoding


def test_long_texts_lose_their_first_tokens(char_tokenizer):
    assert encode("abcdef", char_tokenizer, max_length=4) == encode("cdef", char_tokenizer)


def test_right_pad_marks_padding_out_of_the_attention_mask():
    batch = right_pad([[4], [5, 6, 7]], pad_id=0)
    assert batch["input_ids"].tolist() == [[4, 0, 0], [5, 6, 7]]
    assert batch["attention_mask"].tolist() == [[1, 0, 0], [1, 1, 1]]


def test_rows_without_a_prompt_are_whole_conversations(char_tokenizer):
    user = {"role": "user", "content": "hi"}
    row = validate_preference_rows([{"chosen": [user, {"role": "assistant", "content": "yo"}],
                                     "rejected": [user, {"role": "assistant", "content": "no"}],
                                     "margin": 2}])[0]
    chosen, rejected, margin = encode_pair(row, char_tokenizer, max_length=100)
    assert chosen == encode("<|user|>hi\n<|assistant|>yo<eos>\n", char_tokenizer)
    assert rejected == encode("<|user|>hi\n<|assistant|>no<eos>\n", char_tokenizer)
    assert margin == 2.0
    assert scored_text(None, "q a:b", char_tokenizer) == "q a:b"


# ---------------------------------------------------------------------------- bad rows


@pytest.mark.parametrize("rows, message", [
    ([{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": "a"}],
     "train_dataset row 1: no 'rejected' column"),
    ([{"prompt": "q", "rejected": "b"}], "train_dataset row 0: no 'chosen' column"),
    ([{"prompt": "q", "chosen": "", "rejected": "b"}], "row 0: 'chosen' is an empty string"),
    ([{"chosen": "a", "rejected": [{"role": "assistant", "content": "b"}]}],
     "row 0: 'chosen' and 'rejected' differ in format"),
    ([{"prompt": "q", "chosen": [{"role": "assistant", "content": "a"}],
       "rejected": [{"role": "assistant", "content": "b"}]}], "row 0: 'prompt' is a string but 'chosen'"),
    ([{"prompt": "q", "chosen": "a", "rejected": "b", "margin": "big"}], "row 0: 'margin' is 'big'"),
    ([], "train_dataset is empty"),
])
def test_bad_rows_name_the_row_and_the_key(base_dir, tmp_path, rows, message):
    args = RewardModelConfig(output_dir=str(tmp_path), max_steps=1)
    with pytest.raises(DatasetError, match=message):
        RewardModelTrainer(str(base_dir), args, rows)
