"""The embedded default: character tokenizer, save/load with the Auto classes, clear load errors."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpokit.models import (
    BOS,
    CHARACTERS,
    EOS,
    PAD,
    REASONING_TAGS,
    ModelLoadError,
    create_embedded_default,
    create_tiny_model,
    load_model,
    load_tokenizer,
    pick_device,
    save_model,
)

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = dict(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64)
TEXT = "sum a4b7:<reasoning>a4=4, b7=11\n(ok!)</reasoning> <answer>11</answer>"


@pytest.fixture(scope="module")
def embedded_dir(tmp_path_factory):
    return create_embedded_default(tmp_path_factory.mktemp("models") / "embedded", **TINY)


# ---------------------------------------------------------------------------------- tokenizer


def test_each_reasoning_tag_is_one_token(char_tokenizer):
    tok = char_tokenizer
    for tag in REASONING_TAGS:
        ids = tok(tag, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and tok.convert_ids_to_tokens(ids) == [tag]
    tokens = tok.convert_ids_to_tokens(tok("<reasoning>a4=4</reasoning><answer>4</answer>")["input_ids"])
    assert tokens == ["<reasoning>", "a", "4", "=", "4", "</reasoning>", "<answer>", "4", "</answer>"]


def test_tokenizer_is_character_level_and_round_trips(char_tokenizer):
    tok = char_tokenizer
    ids = tok(TEXT)["input_ids"]  # no BOS/EOS added by default
    assert tok.decode(ids) == TEXT
    assert len(ids) == len(TEXT) - sum(len(t) - 1 for t in REASONING_TAGS)
    everything = CHARACTERS + "".join(REASONING_TAGS)
    assert tok.decode(tok(everything)["input_ids"]) == everything
    assert len(tok(CHARACTERS)["input_ids"]) == len(CHARACTERS)  # every character is a token


def test_tokenizer_special_tokens(char_tokenizer):
    tok = char_tokenizer
    assert (tok.pad_token, tok.eos_token, tok.bos_token) == (PAD, EOS, BOS)
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) == (0, 1, 2)
    assert len(tok) == 3 + len(REASONING_TAGS) + len(CHARACTERS)
    ids = tok("ab", add_special_tokens=False)["input_ids"] + [tok.eos_token_id, tok.pad_token_id]
    assert tok.decode(ids, skip_special_tokens=True) == "ab"
    assert tok.decode(tok("<answer>1</answer>")["input_ids"], skip_special_tokens=True) == \
        "<answer>1</answer>"  # tags are not special: they survive skip_special_tokens


def test_chat_template_renders_roles(char_tokenizer):
    text = char_tokenizer.apply_chat_template([{"role": "user", "content": "sum a1:"}],
                                              tokenize=False, add_generation_prompt=True)
    assert text == "<|user|>sum a1:\n<|assistant|>"


# ------------------------------------------------------------------------------- save and load


def test_create_embedded_default_loads_with_the_auto_classes(embedded_dir, char_tokenizer):
    assert (embedded_dir / "config.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(embedded_dir)
    tok = AutoTokenizer.from_pretrained(embedded_dir)
    assert model.config.model_type == "llama"
    assert tok.get_vocab() == char_tokenizer.get_vocab()
    assert model.config.vocab_size == len(tok) == len(char_tokenizer)
    assert (tok.pad_token_id, tok.eos_token_id) == (char_tokenizer.pad_token_id,
                                                    char_tokenizer.eos_token_id)
    assert tok(TEXT)["input_ids"] == char_tokenizer(TEXT)["input_ids"]
    assert tok.decode(tok(TEXT)["input_ids"]) == TEXT
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 2


def test_saved_weights_are_the_seeded_model(embedded_dir, char_tokenizer):
    loaded = load_model(embedded_dir, torch.device("cpu")).eval()
    fresh = create_tiny_model(char_tokenizer, seed=0, **TINY).eval()
    ids = torch.tensor([char_tokenizer(TEXT)["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, fresh(ids).logits, atol=1e-6, rtol=0)
    assert next(loaded.parameters()).dtype == torch.float32
    other = create_tiny_model(char_tokenizer, seed=1, **TINY)
    assert not torch.equal(other.model.embed_tokens.weight, fresh.model.embed_tokens.weight)


def test_load_tokenizer_gives_the_char_tokenizer(embedded_dir, char_tokenizer):
    tok = load_tokenizer(embedded_dir)
    assert tok.pad_token == PAD and tok.get_vocab() == char_tokenizer.get_vocab()


def test_load_model_on_a_missing_directory_names_the_path(tmp_path):
    missing = tmp_path / "does-not-exist"
    with pytest.raises(ModelLoadError, match="is not a directory") as info:
        load_model(missing)
    assert str(missing) in str(info.value)
    with pytest.raises(ModelLoadError, match="is not a directory"):
        load_tokenizer(missing)


def test_load_model_on_a_directory_without_config_names_the_path(tmp_path):
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "weights.bin").write_text("x")
    with pytest.raises(ModelLoadError) as info:
        load_model(folder)
    message = str(info.value)
    assert str(folder) in message and "no config.json" in message and "weights.bin" in message
    a_file = tmp_path / "model.safetensors"
    a_file.write_text("x")
    with pytest.raises(ModelLoadError, match="is not a directory"):
        load_model(a_file)


def test_save_model_leaves_no_temporary_directory(tmp_path, tiny_model, char_tokenizer):
    target = tmp_path / "checkpoint-1"
    (tmp_path / "checkpoint-1.tmp").mkdir()  # left over from an interrupted save
    (tmp_path / "checkpoint-1.tmp" / "junk").write_text("x")
    assert save_model(tiny_model, char_tokenizer, target) == target
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1"]
    (target / "stale-file").write_text("x")
    save_model(tiny_model, char_tokenizer, target)  # overwrite an existing checkpoint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1"]
    assert not (target / "stale-file").exists()
    assert (target / "config.json").is_file()
    assert AutoTokenizer.from_pretrained(target).get_vocab() == char_tokenizer.get_vocab()


# ------------------------------------------------------------------------------------- devices


def test_pick_device_auto_is_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    assert pick_device() == torch.device("cpu")


def test_pick_device_explicit_choices():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("cuda:1") == torch.device("cuda", 1)
    if not torch.cuda.is_available():
        assert pick_device("auto").type == "cpu"
