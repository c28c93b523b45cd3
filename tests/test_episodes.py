"""Multi-turn episodes on SmolLM2's BPE tokenizer and ChatML template (not append-only: it adds a
default system prompt): the trained tokens are the sampled ones, environment tokens are the
template's own rendering, and only sampled tokens are in the loss mask."""

from __future__ import annotations

import pytest

from grpokit.agents.episodes import Episode, EnvironmentTokens
from grpokit.models import load_tokenizer

pytestmark = pytest.mark.slow  # the real tokenizer, converted once per session


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    return load_tokenizer(smollm2_dir)


def sampled(tokenizer, text):
    """A turn as a sampler would end it: the text's tokens, then end-of-turn."""
    return tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]


def test_three_turns_keep_the_sampled_tokens_and_render_as_the_template_does(tokenizer):
    question = [{"role": "user", "content": "What is 123 * 45?"}]
    turns = ['<tool_call>{"name": "multiply", "arguments": {"a": 123, "b": 45}}</tool_call>',
             '<tool_call>{"name": "add", "arguments": {"a": 5535, "b": 0}}</tool_call>',
             "<answer>5535</answer>"]
    replies = ["5535", "5535"]
    environment = EnvironmentTokens(tokenizer)
    episode = Episode(tokenizer.apply_chat_template(question, add_generation_prompt=True, tokenize=True,
                                                    return_dict=False))
    # the second turn is sampled in a tokenization BPE would not produce: "add" letter by letter
    letters = [tokenizer.convert_tokens_to_ids(c) for c in "add"]
    assert tokenizer.encode("add", add_special_tokens=False) != letters
    second = (tokenizer.encode('<tool_call>{"name": "', add_special_tokens=False) + letters
              + tokenizer.encode('", "arguments": {"a": 5535, "b": 0}}</tool_call>', add_special_tokens=False)
              + [tokenizer.eos_token_id])
    turn_ids = [sampled(tokenizer, turns[0]), second, sampled(tokenizer, turns[2])]
    for i, ids in enumerate(turn_ids):
        episode.add_model_turn(ids, [-0.5] * len(ids))
        if i < len(replies):
            episode.add_environment(environment([{"role": "tool", "content": replies[i]}]))

    # the tokens trained on, in order, at the sampled positions, are exactly the sampled ones
    trained = [t for t, m in zip(episode.ids, episode.sampled_mask) if m]
    assert trained == sum(turn_ids, [])
    assert episode.model_turns == 3 and sum(episode.sampled_mask) == len(trained)
    assert [lp for lp, m in zip(episode.sampling_logp, episode.sampled_mask) if not m] == [0.0] * (
        len(episode.ids) - len(trained))
    # and the whole sequence reads as the template renders the conversation
    conversation = question + [m for i, t in enumerate(turns) for m in (
        [{"role": "assistant", "content": t}] + ([{"role": "tool", "content": replies[i]}] if i < 2 else []))]
    rendered = tokenizer.apply_chat_template(conversation, tokenize=False)
    text = tokenizer.decode(episode.context_ids)
    assert rendered.startswith(text) and rendered[len(text):].strip() == ""
    # re-encoding that text would not give back the tokens sampled in turn 2
    assert tokenizer.encode(text, add_special_tokens=False) != episode.context_ids


def test_environment_tokens_end_with_the_next_assistant_header(tokenizer):
    ids = EnvironmentTokens(tokenizer)([{"role": "tool", "content": "42"}])
    assert tokenizer.decode(ids) == "\n<|im_start|>tool\n42<|im_end|>\n<|im_start|>assistant\n"
    assert Episode([1]).tokens_by_role() == {"prompt": 1, "model": 0, "environment": 0}
