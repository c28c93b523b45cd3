"""Tests for grpokit.data: loading, validation, chat rendering, PromptStream."""

import json

import datasets
import pytest

from grpokit.data import (
    DatasetError,
    PromptStream,
    extra_columns,
    is_conversational,
    load_rows,
    render_prompt,
    validate_prompt_rows,
    validate_sft_rows,
)

ROWS = [{"prompt": "1+1=", "answer": "2"}, {"prompt": "2+3=", "answer": "5"}]
CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]


# ----------------------------------------------------------------------------- loading


def test_load_list_of_dicts_copies_rows():
    rows = load_rows(ROWS)
    assert rows == ROWS and rows[0] is not ROWS[0]


def test_load_list_rejects_non_dict_item():
    with pytest.raises(DatasetError, match="list item 1 is str"):
        load_rows([{"prompt": "a"}, "b"])


def test_load_dataset_object():
    assert load_rows(datasets.Dataset.from_list(ROWS)) == ROWS


def test_load_dataset_dict_uses_train_split():
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)})
    assert load_rows(dd) == ROWS


def test_load_jsonl(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert load_rows(path) == ROWS


def test_load_json_with_chat_prompts(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"prompt": CHAT, "answer": "x"}]))
    assert load_rows(str(path)) == [{"prompt": CHAT, "answer": "x"}]


def test_load_csv(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("prompt,answer\n1+1=,two\n2+3=,five\n")
    assert load_rows(path) == [{"prompt": "1+1=", "answer": "two"}, {"prompt": "2+3=", "answer": "five"}]


def test_load_parquet(tmp_path):
    path = tmp_path / "d.parquet"
    datasets.Dataset.from_list(ROWS).to_parquet(str(path))
    assert load_rows(path) == ROWS


def test_load_save_to_disk_dir(tmp_path):
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    assert load_rows(tmp_path / "ds") == ROWS


def test_load_missing_file_names_path(tmp_path):
    with pytest.raises(DatasetError, match=f"data file '{tmp_path}/nope.jsonl' does not exist; expected"):
        load_rows(tmp_path / "nope.jsonl")


def test_an_empty_jsonl_file_is_a_clear_error(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DatasetError, match="empty.jsonl' holds no rows"):
        load_rows(tmp_path / "empty.jsonl")


def test_a_broken_jsonl_line_is_named(tmp_path):
    (tmp_path / "broken.jsonl").write_text('{"prompt": "a"}\n{"prompt": "b",}\n')
    with pytest.raises(DatasetError, match="broken.jsonl' line 2 is not valid JSON"):
        load_rows(tmp_path / "broken.jsonl")


def test_a_row_without_prompt_names_the_file_the_row_its_line_and_the_format_to_use(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"question": "2+2?", "answer": "#### 4"}\n')
    with pytest.raises(DatasetError) as info:
        validate_prompt_rows(load_rows(path), "train_dataset")
    assert str(info.value).startswith(f"{path} row 1 (line 3): no 'prompt' column (found columns: "
                                      f"question, answer)")
    assert "set data.format: gsm8k" in str(info.value)


def test_a_csv_cell_left_empty_counts_as_missing(tmp_path):
    (tmp_path / "d.csv").write_text("prompt,answer\na,1\n,2\n")
    with pytest.raises(DatasetError, match="d.csv row 1: no 'prompt' column \\(found columns: answer\\)"):
        validate_prompt_rows(load_rows(tmp_path / "d.csv"))


def test_load_unknown_extension_lists_supported(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("hello")
    with pytest.raises(ValueError, match=r"'\.txt'.*\.jsonl, \.json, \.csv, \.parquet"):
        load_rows(path)


def test_load_wrong_type():
    with pytest.raises(TypeError, match="found int"):
        load_rows(5)


# -------------------------------------------------------------------------- validation


def test_missing_prompt_names_row_and_columns():
    rows = [{"prompt": "ok"}] * 17 + [{"query": "q", "answer": "a"}]
    expected = (
        "dataset row 17: no 'prompt' column (found columns: query, answer); "
        "expected a string or a list of chat messages"
    )
    with pytest.raises(DatasetError) as info:
        validate_prompt_rows(rows)
    assert str(info.value) == expected


def test_source_name_in_error():
    with pytest.raises(DatasetError, match=r"^train.jsonl row 0: 'prompt' is an empty string"):
        validate_prompt_rows([{"prompt": ""}], source_name="train.jsonl")


def test_empty_dataset_is_error():
    with pytest.raises(DatasetError, match="dataset is empty"):
        validate_prompt_rows([])


@pytest.mark.parametrize(
    "prompt, fragment",
    [
        ([], "'prompt' is an empty list"),
        (["hi"], "'prompt' message 0 is str, not a dict"),
        ([{"role": "user"}], "'prompt' message 0 has no 'content' key \\(found keys: role\\)"),
        ([{"content": "hi"}], "'prompt' message 0 has no 'role' key"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": 3}], "'prompt' message 1 'content' is int \\(3\\)"),
        (42, "'prompt' is int \\(42\\)"),
        (None, "no 'prompt' column \\(found columns: none\\)"),
    ],
)
def test_bad_prompts(prompt, fragment):
    with pytest.raises(DatasetError, match=f"dataset row 1: {fragment}"):
        validate_prompt_rows([{"prompt": "fine"}, {"prompt": prompt}])


def test_valid_rows_returned_unchanged():
    rows = [{"prompt": "a"}, {"prompt": CHAT}]
    assert validate_prompt_rows(rows) is rows


def test_is_conversational():
    assert is_conversational(CHAT)
    assert not is_conversational("hi")
    assert not is_conversational([])
    assert not is_conversational(["hi"])


def test_extra_columns_excludes_prompt():
    assert extra_columns(ROWS) == ["answer"]
    assert extra_columns([{"prompt": "a"}]) == []


# --------------------------------------------------------------------------------- sft


def test_sft_prompt_completion_strings():
    rows = [{"prompt": "1+1=", "completion": "2", "id": 3}]
    assert validate_sft_rows(rows, "sft") == [{"prompt": "1+1=", "completion": "2"}]


def test_sft_messages_split_last_assistant():
    reply = {"role": "assistant", "content": "hello"}
    out = validate_sft_rows([{"messages": CHAT + [reply]}], "sft")
    assert out == [{"prompt": CHAT, "completion": [reply]}]


def test_sft_messages_last_not_assistant():
    with pytest.raises(DatasetError, match=r"sft row 0: .*final 'assistant'.*found roles: system, user"):
        validate_sft_rows([{"messages": CHAT}], "sft")


def test_sft_missing_columns():
    with pytest.raises(DatasetError, match=r"sft row 0: expected 'prompt' and 'completion'.*found columns: prompt"):
        validate_sft_rows([{"prompt": "a"}], "sft")


def test_sft_mixed_formats():
    with pytest.raises(DatasetError, match="'prompt' is a message list but 'completion' is a string"):
        validate_sft_rows([{"prompt": CHAT, "completion": "x"}], "sft")


def test_sft_bad_completion():
    with pytest.raises(DatasetError, match="sft row 0: 'completion' is an empty string"):
        validate_sft_rows([{"prompt": "a", "completion": ""}], "sft")


# --------------------------------------------------------------------------- rendering


@pytest.fixture
def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[UNK]", "[PAD]", "be", "brief", "hi", "there"])}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", pad_token="[PAD]")
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    return tok


def test_render_chat_prompt(tokenizer):
    assert render_prompt(CHAT, tokenizer) == "<system>be brief\n<user>hi there\n<assistant>"


def test_render_string_unchanged(tokenizer):
    assert render_prompt("hi there", tokenizer) == "hi there"


def test_render_without_chat_template(tokenizer):
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="has no chat_template"):
        render_prompt(CHAT, tokenizer)


def test_render_bad_prompt(tokenizer):
    with pytest.raises(DatasetError, match="render_prompt: prompt is int"):
        render_prompt(3, tokenizer)


# ------------------------------------------------------------------------------ stream

LETTERS = [{"prompt": c} for c in "abcdefg"]


def _prompts(batch):
    return "".join(r["prompt"] for r in batch)


def test_stream_each_epoch_is_a_permutation():
    stream = PromptStream(LETTERS, seed=3)
    epoch0, epoch1 = _prompts(stream.next_batch(7)), _prompts(stream.next_batch(7))
    assert sorted(epoch0) == sorted(epoch1) == list("abcdefg")
    assert epoch0 != epoch1  # reshuffled each epoch (true for this seed)
    assert stream.state_dict()["epoch"] == 1


def test_stream_deterministic_for_seed():
    a, b, c = PromptStream(LETTERS, seed=5), PromptStream(LETTERS, seed=5), PromptStream(LETTERS, seed=6)
    batches_a = [_prompts(a.next_batch(3)) for _ in range(6)]
    assert batches_a == [_prompts(b.next_batch(3)) for _ in range(6)]
    assert batches_a != [_prompts(c.next_batch(3)) for _ in range(6)]


def test_stream_exact_resume_across_epoch_boundary():
    stream = PromptStream(LETTERS, seed=11)
    stream.next_batch(5)
    stream.next_batch(4)  # crosses into epoch 1
    state = json.loads(json.dumps(stream.state_dict()))
    assert state == {"epoch": 1, "position": 2, "seed": 11, "num_rows": 7}
    expected = [_prompts(stream.next_batch(3)) for _ in range(5)]
    resumed = PromptStream(LETTERS, seed=0)
    resumed.load_state_dict(state)
    assert [_prompts(resumed.next_batch(3)) for _ in range(5)] == expected


def test_stream_no_shuffle_and_iter():
    stream = PromptStream(LETTERS[:3], shuffle=False)
    assert [next(stream)["prompt"] for _ in range(5)] == list("abcab")


def test_stream_yields_copies():
    stream = PromptStream(ROWS)
    stream.next_batch(1)[0]["prompt"] = "mutated"
    assert [r["prompt"] for r in ROWS] == ["1+1=", "2+3="]


def test_stream_errors():
    with pytest.raises(DatasetError, match="0 rows"):
        PromptStream([])
    stream = PromptStream(LETTERS)
    with pytest.raises(ValueError, match="n must be >= 1, found 0"):
        stream.next_batch(0)
    with pytest.raises(ValueError, match="saved for 3 rows.*this stream has 7 rows"):
        stream.load_state_dict({"epoch": 0, "position": 1, "seed": 0, "num_rows": 3})
    with pytest.raises(KeyError, match="missing \\['seed'\\]"):
        stream.load_state_dict({"epoch": 0, "position": 1})
