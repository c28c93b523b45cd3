"""Multi-turn episodes on SmolLM2's BPE tokenizer and ChatML template (not append-only: it adds a
default system prompt): the trained tokens are the sampled ones, environment tokens are the
template's own rendering, and only sampled tokens are in the loss mask."""

from __future__ import annotations

import math

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


class Echo:
    """Answers every model turn with a tool message, so episodes run to max_turns or the budget."""

    def respond(self, episodes, turns, stats):
        return [[{"role": "tool", "content": f"seen {len(text)} characters"}] for text in turns]


def test_sampled_episodes_hold_the_sampled_tokens_with_their_log_probs(episode_logprobs, smollm2_dir):
    import torch

    from grpokit.agents.multi_turn import sample_episodes
    from grpokit.models import load_model
    from grpokit.sampling.sampler import SamplingParams

    model, tokenizer = load_model(smollm2_dir).eval(), load_tokenizer(smollm2_dir)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                             tokenize=True, return_dict=False) for q in ("Say hi.", "Count to 3.")]
    episodes, truncated, stats = sample_episodes(model, tokenizer, [p for p in prompts for _ in range(2)], 2,
                                                 SamplingParams(max_new_tokens=24), Echo(), max_turns=3,
                                                 max_tokens=90, generator=torch.Generator().manual_seed(0))
    environment = EnvironmentTokens(tokenizer)
    assert sum(stats.model_turns) > len(episodes)  # some episodes went on after their first turn
    assert len(episodes) == 4 and stats.model_turns == [e.model_turns for e in episodes]
    for episode, cut in zip(episodes, truncated):
        assert len(episode.ids) <= 90 and 1 <= episode.model_turns <= 3
        assert cut or episode.model_turns == 3  # Echo never ends an episode itself
        # every environment block is the template's rendering of the Echo message
        blocks, start = [], None
        for j, m in enumerate(episode.sampled_mask + [1]):
            if m == 0 and start is None:
                start = j
            elif m == 1 and start is not None:
                blocks.append(episode.ids[start:j])
                start = None
        assert len(blocks) == episode.model_turns - 1 + (1 if episode.sampled_mask[-1] == 0 else 0)
        for block in blocks:
            text = tokenizer.decode(block)
            assert text.startswith("\n<|im_start|>tool\nseen ") and text.endswith("<|im_start|>assistant\n")
            assert block == environment([{"role": "tool", "content": text.split("\n")[2].split("<|im_end|>")[0]}])
        # the sampler's log-probs at sampled tokens equal a plain forward over the whole context
        forward, sampler = episode_logprobs(model, episode)
        assert torch.allclose(forward, sampler, atol=2e-3)


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: The first factor.
        b: The second factor.
    """
    return a * b


@pytest.mark.parametrize("use_lora", [False, True])
def test_a_grpo_step_on_episodes_trains_only_the_sampled_tokens(smollm2_dir, tmp_path, use_lora):
    from grpokit import GRPOConfig, GRPOTrainer

    rows = [{"prompt": [{"role": "user", "content": text}]} for text in ("Say hi.", "Say yes.")]
    seen = []

    def final_answer_length(prompts, completions, **kwargs):
        seen.extend(completions)
        return [float(len(c[-1]["content"]) % 5) for c in completions]

    args = GRPOConfig(output_dir=str(tmp_path), prompts_per_step=2, num_generations=2, max_completion_length=64,
                      max_steps=2, beta=0.04, learning_rate=1e-5, max_tool_calling_iterations=2, save_steps=0,
                      use_lora=use_lora)
    steps = []

    class Record:
        def on_step_end(self, trainer, step, batch, metrics):
            steps.append((batch, dict(metrics)))
            trainer.agents.environment = Echo()  # from step 2 on, an environment that answers every turn

    trainer = GRPOTrainer(model=str(smollm2_dir), reward_funcs=[final_answer_length], args=args, train_dataset=rows,
                          tools=[multiply], callbacks=[Record()])
    assert trainer.agents.schemas[0]["function"]["name"] == "multiply"
    trainer.train(show_progress=False)
    (_, first), (batch, second) = steps
    assert first["agent/turns_mean"] >= 1 and "agent/tool_calls" in first  # the real tools: called or not
    rollout = batch.rollout
    environment_tokens = (rollout.completion_mask - rollout.sampled_mask).bool()
    assert environment_tokens.any() and second["agent/environment_tokens_mean"] > 0
    assert (batch.loss_mask[environment_tokens] == 0).all() and (batch.weights[environment_tokens] == 0).all()
    assert (batch.loss_mask.bool() == rollout.sampled_mask.bool()).all()
    assert all(isinstance(c, list) and c[0]["role"] == "assistant" for c in seen)
    assert math.isfinite(second["loss"]) and second["agent/turns_mean"] > 1


def test_a_crashed_multi_turn_run_resumes_to_the_uninterrupted_one_line_for_line(smollm2_dir, tmp_path):
    import json

    from grpokit import GRPOConfig, GRPOTrainer

    class Crash(Exception):
        pass

    class CrashAt:
        def on_step_end(self, trainer, step, batch, metrics):
            if step == 3:
                raise Crash

    rows = [{"prompt": [{"role": "user", "content": text}]} for text in ("Say hi.", "Say yes.", "Say no.")]

    def make(out, callbacks=()):
        args = GRPOConfig(output_dir=str(out), prompts_per_step=2, num_generations=2, max_completion_length=32,
                          max_steps=3, save_steps=2, beta=0.0, learning_rate=1e-5, max_tool_calling_iterations=2,
                          seed=1)
        trainer = GRPOTrainer(model=str(smollm2_dir), args=args, train_dataset=rows, tools=[multiply],
                              reward_funcs=[lambda prompts, completions, **kw: [len(c) % 3 for c in completions]],
                              callbacks=list(callbacks))
        trainer.agents.environment = Echo()  # every turn answered: episodes of several turns
        return trainer

    def logged(out):
        lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in line.items() if not k.startswith("time/") and not k.endswith("_per_s")}
                for line in lines]

    make(tmp_path / "straight").train(show_progress=False)
    with pytest.raises(Crash):
        make(tmp_path / "resumed", [CrashAt()]).train(show_progress=False)
    make(tmp_path / "resumed").train(show_progress=False, resume_from_checkpoint=True)
    straight = logged(tmp_path / "straight")
    assert max(line["agent/turns_mean"] for line in straight) > 1
    assert logged(tmp_path / "resumed") == straight
