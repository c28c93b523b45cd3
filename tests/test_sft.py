"""Supervised fine-tuning: demonstration encoding, padding, the completion-only loss and a short
end-to-end run on the digit-sum task."""

import json

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpokit.config import SFTConfig
from grpokit.data import DatasetError
from grpokit.models import create_embedded_default
from grpokit.tasks import DigitSumTask
from grpokit.trainers.sft import SFTTrainer, collate, completion_nll, encode_demonstration

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = dict(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64)


def ids_of(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


# ------------------------------------------------------------------------------------ encoding


def test_encode_demonstration_masks_exactly_the_prompt_and_appends_eos(char_tokenizer):
    tok = char_tokenizer
    prompt, completion = "sum a4b7:", "<answer>11</answer>"
    ids, labels = encode_demonstration(prompt, completion, tok, max_length=100)
    prompt_ids, completion_ids = ids_of(tok, prompt), ids_of(tok, completion)
    assert len(prompt_ids) == 9 and len(completion_ids) == 4  # char-level; tags are one token
    assert ids == prompt_ids + completion_ids + [tok.eos_token_id]
    assert labels == [-100] * 9 + completion_ids + [tok.eos_token_id]
    assert len(ids) == len(labels) == 14


def test_encode_demonstration_cuts_at_the_right(char_tokenizer):
    tok = char_tokenizer
    ids, labels = encode_demonstration("sum a4b7:", "<answer>11</answer>", tok, max_length=11)
    assert ids == ids_of(tok, "sum a4b7:<answer>1")
    assert labels == [-100] * 9 + ids_of(tok, "<answer>1")
    ids, labels = encode_demonstration("sum a4b7:", "<answer>11</answer>", tok, max_length=5)
    assert ids == ids_of(tok, "sum a") and labels == [-100] * 5


def test_collate_right_pads_with_pad_id_and_ignored_labels():
    batch = collate([([5, 6, 7, 8], [-100, -100, 7, 8]), ([9, 10], [-100, 10])], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [9, 10, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 7, 8], [-100, 10, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert all(t.dtype == torch.long for t in batch.values())


# ---------------------------------------------------------------------------------------- loss

DEMOS = [("sum a4b7:", "<answer>11</answer>"), ("sum a1:", "<reasoning>a1=1</reasoning>"),
         ("hi", "x")]


def demo_batch(tok):
    examples = [encode_demonstration(p, c, tok, 100) for p, c in DEMOS]
    return examples, collate(examples, tok.pad_token_id)


def mean_nll(model, batch):
    total, count = completion_nll(model, batch)
    return total / count


def manual_completion_nll(model, examples):
    """Mean over completion tokens of -log p(token | prefix), each row run alone, unpadded."""
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, labels in examples:
            logp = model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
            for t in range(1, len(ids)):
                if labels[t] != -100:
                    total -= logp[t - 1, labels[t]].item()
                    count += 1
    return total / count, count


def test_completion_nll_is_the_mean_nll_over_completion_tokens(varied_model, char_tokenizer):
    examples, batch = demo_batch(char_tokenizer)
    with torch.no_grad():
        loss = mean_nll(varied_model, batch).item()
    expected, count = manual_completion_nll(varied_model, examples)
    assert count == 5 + 7 + 2  # completion tokens + EOS of each row
    assert loss == pytest.approx(expected, abs=1e-4)

    # Labelling every token (prompt included) gives a different number: the mask matters.
    everything = dict(batch, labels=batch["input_ids"].masked_fill(batch["attention_mask"] == 0,
                                                                   -100))
    with torch.no_grad():
        assert abs(mean_nll(varied_model, everything).item() - loss) > 1e-2


def test_completion_nll_gets_no_gradient_from_prompt_positions(varied_model, char_tokenizer):
    """The logits predicting prompt tokens (and padding) carry exactly zero gradient, so the
    prompt tokens' labels cannot matter."""
    examples, batch = demo_batch(char_tokenizer)
    captured = {}

    def keep_logits(module, args, output):
        output.retain_grad()
        captured["logits"] = output

    handle = varied_model.get_output_embeddings().register_forward_hook(keep_logits)
    try:
        mean_nll(varied_model, batch).backward()
    finally:
        handle.remove()
        varied_model.zero_grad(set_to_none=True)
    grad_norms = captured["logits"].grad.norm(dim=-1)  # (B, T)
    labels = batch["labels"]
    for row in range(labels.shape[0]):
        for t in range(labels.shape[1]):
            predicts_labelled = t + 1 < labels.shape[1] and labels[row, t + 1] != -100
            assert (grad_norms[row, t] > 0) == bool(predicts_labelled), (row, t)


def test_completion_nll_ignores_what_the_prompt_labels_were(varied_model, char_tokenizer):
    """Two encodings that differ only in the prompt part of the labels give the same loss as
    long as that part is ignored; the prompt *tokens* still condition the completion."""
    tok = char_tokenizer
    ids_a, labels_a = encode_demonstration("sum a4b7:", "<answer>11</answer>", tok, 100)
    ids_b, labels_b = encode_demonstration("sum a4b8:", "<answer>11</answer>", tok, 100)
    assert labels_a == labels_b and ids_a != ids_b
    with torch.no_grad():
        loss_a = mean_nll(varied_model, collate([(ids_a, labels_a)], tok.pad_token_id))
        loss_b = mean_nll(varied_model, collate([(ids_b, labels_b)], tok.pad_token_id))
        # same ids, the prompt's labels turned into arbitrary ignored values
        relabelled = collate([(ids_a, labels_a)], tok.pad_token_id)
        relabelled["labels"][0, 0] = 7  # position 0 is never a target (nothing predicts it)
        loss_c = mean_nll(varied_model, relabelled)
    assert loss_c.item() == loss_a.item()
    assert loss_a.item() != pytest.approx(loss_b.item(), abs=1e-6)  # context matters


# ------------------------------------------------------------------------------------- trainer


@pytest.fixture(scope="module")
def base_model_dir(tmp_path_factory):
    return create_embedded_default(tmp_path_factory.mktemp("sft") / "base", **TINY)


def test_sft_trainer_lowers_the_loss_and_writes_its_outputs(base_model_dir, tmp_path):
    out = tmp_path / "run"
    args = SFTConfig(output_dir=str(out), max_steps=30, learning_rate=3e-3,
                     per_device_train_batch_size=8, device="cpu", seed=0)
    rows = DigitSumTask().sft_rows(64, seed=0)
    trainer = SFTTrainer(str(base_model_dir), args, train_dataset=rows)
    summary = trainer.train(show_progress=False)

    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 31))
    losses = [m["train/loss"] for m in metrics]
    assert all(loss > 0 for loss in losses)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.75 * first, (first, last)
    assert metrics[0]["train/learning_rate"] > metrics[-1]["train/learning_rate"]  # linear decay

    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["max_steps"] == 30 and config["learning_rate"] == 3e-3
    assert SFTConfig.model_validate(config) == args

    saved = json.loads((out / "summary.json").read_text())
    assert saved == summary
    assert saved["stage"] == "sft" and saved["steps"] == 30
    assert saved["final_loss"] == pytest.approx(losses[-1])
    assert saved["model_dir"] == str(out / "model")

    assert not (out / "model.tmp").exists()
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    assert model.config.vocab_size == len(tokenizer) == len(trainer.tokenizer)
    for name, tensor in trainer.model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, atol=0, rtol=0)
    base = AutoModelForCausalLM.from_pretrained(base_model_dir)
    assert not torch.equal(base.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_sft_trainer_checks_the_rows_before_loading_the_model(tmp_path):
    rows = [{"prompt": "sum a1:", "completion": "<answer>1</answer>"}, {"prompt": "sum a2:"}]
    args = SFTConfig(output_dir=str(tmp_path / "run"), max_steps=1, device="cpu")
    with pytest.raises(DatasetError, match=r"row 1\b.*'completion'"):
        SFTTrainer(str(tmp_path / "no-such-model"), args, train_dataset=rows)
    assert not (tmp_path / "run").exists()


def test_sft_trainer_reports_a_missing_model_once_the_rows_are_valid(tmp_path):
    from grpokit.models import ModelLoadError

    rows = [{"prompt": "sum a1:", "completion": "<answer>1</answer>"}]
    args = SFTConfig(output_dir=str(tmp_path / "run"), max_steps=1, device="cpu")
    with pytest.raises(ModelLoadError, match="no-such-model"):
        SFTTrainer(str(tmp_path / "no-such-model"), args, train_dataset=rows)


def test_sft_trainer_accepts_messages_rows(tiny_model, char_tokenizer, tmp_path):
    rows = [{"messages": [{"role": "user", "content": "sum a1:"},
                          {"role": "assistant", "content": "<answer>1</answer>"}]}]
    args = SFTConfig(output_dir=str(tmp_path / "run"), max_steps=1, device="cpu")
    trainer = SFTTrainer(tiny_model, args, train_dataset=rows, processing_class=char_tokenizer)
    (ids, labels), = trainer.examples
    labelled = [t for t in labels if t != -100]
    assert labelled[-1] == char_tokenizer.eos_token_id
    assert "<answer>1</answer>" in char_tokenizer.decode(labelled)
