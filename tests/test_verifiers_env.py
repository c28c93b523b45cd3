"""verifiers environments (SingleTurnEnv, a MultiTurnEnv subclass, ToolEnv) run unchanged on
grpokit's sampler: every episode trains on exactly the tokens the sampler returned (the ones
verifiers recorded in its trajectory, whose text is what the environment saw), environment
tokens are the template's rendering of the environment's messages and masked, the rubric's
reward comes back per episode, and concurrent turns are decoded in few ``generate`` calls."""

from __future__ import annotations

import asyncio
import itertools
import signal
import sys
import types

import pytest
import torch

vf = pytest.importorskip("verifiers")
if not hasattr(vf, "MultiTurnEnv"):
    pytest.skip("verifiers without its classic environment API", allow_module_level=True)

from datasets import Dataset  # noqa: E402

from grpokit.agents import sampler_client  # noqa: E402
from grpokit.agents.episodes import EnvironmentTokens  # noqa: E402
from grpokit.agents.tool_calls import parse_tool_calls  # noqa: E402
from grpokit.agents.verifiers_env import sample_verifiers_episodes  # noqa: E402
from grpokit.data.prompts import encode_prompt  # noqa: E402
from grpokit.errors import ConfigError, MissingDependencyError  # noqa: E402
from grpokit.models import build_char_tokenizer, create_tiny_model  # noqa: E402
from grpokit.sampling.sampler import SamplingParams, generate  # noqa: E402

# a template whose assistant turns end with eos, listing the tools by name
TEMPLATE = ("{% if tools %}<|tools|>{% for t in tools %}{{ t['function']['name'] }} {% endfor %}{{ '\\n' }}{% endif %}"
            "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
            "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def tokenizer():
    tokenizer = build_char_tokenizer()  # the varied model's vocabulary, with a template of this module's own
    tokenizer.chat_template = TEMPLATE
    return tokenizer


@pytest.fixture(autouse=True)
def signal_handlers():
    """A verifiers environment installs SIGINT and SIGTERM handlers when it is made; put pytest's back."""
    saved = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    yield
    for number, handler in saved.items():
        signal.signal(number, handler)


@pytest.fixture
def generate_calls(monkeypatch):
    """The (prompts, group_size) of every ``generate`` call the sampler makes (the real one runs)."""
    calls = []

    def counted(model, prompt_ids, group_size, *args, **kwargs):
        calls.append((len(prompt_ids), group_size))
        return generate(model, prompt_ids, group_size, *args, **kwargs)

    monkeypatch.setattr(sampler_client, "generate", counted)
    return calls


def questions(*texts: str, answers=None) -> Dataset:
    return Dataset.from_list([{"question": q, "answer": a} for q, a in zip(texts, answers or texts)])


def state_recorder():
    """A reward function whose reward is the index of the state it scored, and those states."""
    states = []

    def state_index(state) -> float:
        states.append(state)
        return float(len(states) - 1)

    return state_index, states


def runs(episode) -> list[tuple[bool, list[int]]]:
    """The episode after its prompt as (sampled, tokens) runs: turns and environment blocks."""
    return [(bool(sampled), [token for _, token in run])
            for sampled, run in itertools.groupby(zip(episode.sampled_mask, episode.ids), key=lambda pair: pair[0])]


def check_against_trajectory(episode, state, error, tokenizer):
    """The episode holds exactly the tokens verifiers recorded for its rollout: each turn as the
    sampler returned it (with its log-probs), sampled from the context so far; what verifiers
    saw is their text; between turns, the environment's messages as the template renders them."""
    turns = [ids for sampled, ids in runs(episode) if sampled]
    blocks = [ids for sampled, ids in runs(episode) if not sampled]
    assert len(turns) == episode.model_turns and len(blocks) == len(turns) - 1
    steps = state["trajectory"]
    # a turn verifiers rejects (an empty reply) ends the rollout before it joins the trajectory
    assert len(steps) == len(turns) or (len(steps) == len(turns) - 1 and error.startswith("EmptyModelResponseError")
                                        and turns[-1] == [tokenizer.eos_token_id])
    logps = iter([lp for lp, m in zip(episode.sampling_logp, episode.sampled_mask) if m])
    context = list(episode.prompt_ids)
    for k, (turn, step) in enumerate(zip(turns, steps)):
        assert step["tokens"]["prompt_ids"] == context
        assert step["tokens"]["completion_ids"] == turn
        assert step["tokens"]["completion_logprobs"] == [next(logps) for _ in turn]
        assert step["completion"][0].content == tokenizer.decode(turn, skip_special_tokens=True)
        context += turn
        if k < len(blocks):
            after_reply = len(step["prompt"]) + 1
            sent = steps[k + 1]["prompt"][after_reply:] if k + 1 < len(steps) else None
            if sent is not None:
                assert blocks[k] == EnvironmentTokens(tokenizer)([{"role": m.role, "content": m.content} for m in sent])
            context += blocks[k]
    assert context == episode.context_ids
    assert all(lp == 0.0 for lp, m in zip(episode.sampling_logp, episode.sampled_mask) if not m)


def check_truncation(episodes, truncated, eos):
    """A turn without end-of-turn is the episode's last, and leaves it truncated."""
    for episode, cut in zip(episodes, truncated):
        turns = [ids for sampled, ids in runs(episode) if sampled]
        assert all(turn[-1] == eos for turn in turns[:-1])
        if turns[-1][-1] != eos:
            assert cut


def test_single_turn_env_shares_each_prompt_and_scores_every_episode(varied_model, tokenizer, generate_calls):
    recorder, states = state_recorder()
    env = vf.SingleTurnEnv(dataset=questions("What is 2+3?", "Name a color."), system_prompt="Be brief.",
                           rubric=vf.Rubric(funcs=[recorder]))
    rows = env.get_dataset().to_list()
    episodes, truncated, rewards, stats = sample_verifiers_episodes(
        env, varied_model, tokenizer, rows, 3, SamplingParams(max_new_tokens=24), max_tokens=64,
        generator=torch.Generator().manual_seed(0))

    assert len(episodes) == len(truncated) == len(rewards) == 6
    assert generate_calls == [(2, 3)]  # one call, each row's prompt prefilled once for its 3 episodes
    for i, episode in enumerate(episodes):  # groups contiguous, in row order
        assert episode.prompt_ids == encode_prompt(rows[i // 3]["prompt"], tokenizer, "row")
        assert episode.model_turns == stats.model_turns[i] == 1
    assert sorted(rewards) == [float(k) for k in range(6)]  # the rubric scored each episode once
    for i, episode in enumerate(episodes):
        state = states[int(rewards[i])]
        assert state["prompt"][1].content == rows[i // 3]["question"]
        check_against_trajectory(episode, state, stats.errors[i], tokenizer)
    check_truncation(episodes, truncated, tokenizer.eos_token_id)


class Quiz(vf.MultiTurnEnv):
    """Asks for another try after every answer, until the third."""

    async def env_response(self, messages, state, **kwargs):
        return [{"role": "user", "content": f"Try again ({len(state['trajectory'])})."}]

    @vf.stop
    async def third_answer(self, state) -> bool:
        return len(state["trajectory"]) >= 3


def test_multi_turn_env_trains_on_the_sampled_tokens_decoded_together(episode_logprobs, varied_model, tokenizer, generate_calls):
    recorder, states = state_recorder()
    env = Quiz(dataset=questions("Count to 3.", "Say hi.", "Spell cat."), rubric=vf.Rubric(funcs=[recorder]))
    rows = env.get_dataset().to_list()
    episodes, truncated, rewards, stats = sample_verifiers_episodes(
        env, varied_model, tokenizer, rows, 2, SamplingParams(max_new_tokens=24), max_tokens=200,
        generator=torch.Generator().manual_seed(1))

    assert len(episodes) == 6 and sorted(rewards) == [float(k) for k in range(6)]
    turns = sum(stats.model_turns)
    assert turns > len(episodes) and max(stats.model_turns) == 3  # some episodes went on to their third turn
    assert len(generate_calls) < turns and generate_calls[0] == (3, 2)  # turns of live episodes decoded together
    for i, episode in enumerate(episodes):
        state = states[int(rewards[i])]
        assert state["prompt"][-1].content == rows[i // 2]["question"]
        check_against_trajectory(episode, state, stats.errors[i], tokenizer)
        assert episode.model_turns == 3 or truncated[i] or stats.errors[i]  # the env's own stop, or cut
        # the sampler's log-probs at sampled tokens are what a plain forward over the context gives
        forward, sampler = episode_logprobs(varied_model, episode)
        assert torch.allclose(forward, sampler, atol=1e-4)
    check_truncation(episodes, truncated, tokenizer.eos_token_id)


def test_the_token_budget_ends_episodes_as_a_full_context(varied_model, tokenizer):
    env = Quiz(dataset=questions("Count to 9."), rubric=vf.Rubric(funcs=[lambda completion: 1.0]))
    episodes, truncated, rewards, stats = sample_verifiers_episodes(
        env, varied_model, tokenizer, env.get_dataset().to_list(), 4, SamplingParams(max_new_tokens=24),
        max_tokens=60, generator=torch.Generator().manual_seed(2))
    assert rewards == [1.0] * 4
    assert 60 in [len(e.ids) for e in episodes]  # a turn cut where the budget ends
    for episode, cut, turns, error in zip(episodes, truncated, stats.model_turns, stats.errors):
        assert len(episode.ids) <= 60
        assert cut or turns == 3 or error  # out of budget, or done within it


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first integer.
        b: The second integer.
    """
    return a + b


def tool_calling_model(tokenizer, env, rows):
    """A tiny model trained (next-token loss on its turns) to call ``add`` with the question's
    numbers, then to answer with the tool's result."""
    tools = [{"type": "function", "function": {"name": t.name, "description": t.description,
                                               "parameters": t.parameters}} for t in env.tool_defs]
    environment = EnvironmentTokens(tokenizer)
    eos = [tokenizer.eos_token_id]
    sequences, masks = [], []
    for row in rows:
        a, b = (int(word) for word in row["question"].split() if word.isdigit())
        prompt = encode_prompt(row["prompt"], tokenizer, "row", tools)
        call = tokenizer.encode(f'<tool_call>{{"name": "add", "arguments": {{"a": {a}, "b": {b}}}}}</tool_call>',
                                add_special_tokens=False) + eos
        result = environment([{"role": "tool", "content": str(a + b), "name": "add"}])
        answer = tokenizer.encode(f"<answer>{a + b}</answer>", add_special_tokens=False) + eos
        sequences.append(prompt + call + result + answer)
        masks.append([0] * len(prompt) + [1] * len(call) + [0] * len(result) + [1] * len(answer))
    width = max(map(len, sequences))
    ids = torch.tensor([s + [tokenizer.pad_token_id] * (width - len(s)) for s in sequences])
    mask = torch.tensor([m + [0] * (width - len(m)) for m in masks])[:, 1:].float()
    model = create_tiny_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                              intermediate_size=64)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        logits = model(ids).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        optimizer.zero_grad()
        ((loss * mask).sum() / mask.sum()).backward()
        optimizer.step()
    return model.eval(), tools


def test_tool_env_runs_the_tool_the_model_calls(tokenizer, generate_calls):
    def correct(completion, answer) -> float:
        return float(completion[-1].content == f"<answer>{answer}</answer>")

    env = vf.ToolEnv(tools=[add], dataset=questions("add 2 and 3", "add 4 and 1", answers=["5", "5"]),
                     max_turns=3, rubric=vf.Rubric(funcs=[correct]))
    rows = env.get_dataset().to_list()
    model, tools = tool_calling_model(tokenizer, env, rows)
    episodes, truncated, rewards, stats = sample_verifiers_episodes(
        env, model, tokenizer, rows, 2, SamplingParams(max_new_tokens=80), max_tokens=200,
        generator=torch.Generator().manual_seed(0))

    called = [i for i, turns in enumerate(stats.model_turns) if turns == 2]
    assert called and stats.tool_calls == len(called) and stats.malformed_calls == 0
    assert tokenizer.decode(episodes[0].prompt_ids).startswith("<|tools|>add \n")  # the prompt shows the tools
    for i in called:
        episode = episodes[i]
        assert episode.prompt_ids == encode_prompt(rows[i // 2]["prompt"], tokenizer, "row", tools)
        (_, call), (_, result), (_, answer) = runs(episode)
        [parsed] = parse_tool_calls(tokenizer.decode(call, skip_special_tokens=True)).calls
        assert parsed.name == "add" and call[-1] == tokenizer.eos_token_id
        # verifiers ran the call the model made and answered with the tool's result, as a tool message
        total = str(add(**parsed.arguments))
        assert result == EnvironmentTokens(tokenizer)([{"role": "tool", "content": total, "name": "add"}])
        assert episode.messages[1] == {"role": "tool", "content": total, "name": "add"}
        assert rewards[i] == float(tokenizer.decode(answer) == f"<answer>{rows[i // 2]['answer']}</answer><eos>")
        assert not truncated[i] and stats.errors[i] is None
    assert sum(rewards) > 0  # the model learned to answer with the tool's result
    assert len(generate_calls) == 2 and generate_calls[0] == (2, 2)  # the tool calls' turns decoded together


def test_a_rollout_error_is_reported_with_its_episode(varied_model, tokenizer):
    class Broken(vf.MultiTurnEnv):
        async def env_response(self, messages, state, **kwargs):
            raise vf.ToolCallError("the tool server is down")

    env = Broken(dataset=questions("Count to 3."), max_turns=3, rubric=vf.Rubric(funcs=[lambda completion: 0.5]))
    episodes, truncated, rewards, stats = sample_verifiers_episodes(
        env, varied_model, tokenizer, env.get_dataset().to_list(), 2, SamplingParams(max_new_tokens=24), 100,
        generator=torch.Generator().manual_seed(0))
    assert stats.model_turns == [1, 1] and rewards == [0.5, 0.5]
    for error in stats.errors:  # env_response raised after the first turn (unless verifiers rejected it as empty)
        assert error == "ToolCallError: the tool server is down" or error.startswith("EmptyModelResponseError")


def test_a_rollout_waiting_on_another_does_not_hang_the_batch(varied_model, tokenizer, generate_calls, monkeypatch):
    monkeypatch.setattr(sampler_client, "STALL_SECONDS", 0.05)

    class OneAtATime(vf.SingleTurnEnv):
        lock = asyncio.Lock()

        async def get_model_response(self, state, prompt, *args, **kwargs):
            async with self.lock:  # the other rollout waits here, not on the model
                return await super().get_model_response(state, prompt, *args, **kwargs)

    env = OneAtATime(dataset=questions("Say hi."), rubric=vf.Rubric(funcs=[lambda completion: 1.0]))
    episodes, _, rewards, _ = sample_verifiers_episodes(
        env, varied_model, tokenizer, env.get_dataset().to_list(), 2, SamplingParams(max_new_tokens=8), 50)
    assert [e.model_turns for e in episodes] == [1, 1] and rewards == [1.0, 1.0]
    assert generate_calls == [(1, 1), (1, 1)]


def test_requests_and_environments_it_cannot_serve_are_refused(varied_model, tokenizer, monkeypatch):
    params = SamplingParams(max_new_tokens=8)
    with pytest.raises(ConfigError, match="expected a verifiers environment .* got dict"):
        sample_verifiers_episodes({"prompt": "hi"}, varied_model, tokenizer, [{"prompt": "hi"}], 1, params, 20)
    env = vf.SingleTurnEnv(dataset=questions("Say hi."), sampling_args={"stop": ["\n"]})
    with pytest.raises(ConfigError, match=r"asks for stop=\['\\n'\], which grpokit's sampler does not do"):
        sample_verifiers_episodes(env, varied_model, tokenizer, env.get_dataset().to_list(), 1, params, 20)
    with pytest.raises(ConfigError, match=r"rows\[0\]: expected a row of the environment's dataset"):
        sample_verifiers_episodes(env, varied_model, tokenizer, [{"question": "hi"}], 1, params, 20)

    class Forgetful(Quiz):
        async def get_prompt_messages(self, state):  # drops the model's earlier answers
            return [m for m in await super().get_prompt_messages(state) if m.role != "assistant"]

    env = Forgetful(dataset=questions("Count to 3."))
    with pytest.raises(ConfigError, match="does not continue the conversation the sampler served"):
        sample_verifiers_episodes(env, varied_model, tokenizer, env.get_dataset().to_list(), 2,
                                  SamplingParams(max_new_tokens=24), 100, torch.Generator().manual_seed(0))

    monkeypatch.setitem(sys.modules, "verifiers", None)  # not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'grpokit\[agents\]'"):
        sample_verifiers_episodes(env, varied_model, tokenizer, [], 1, params, 20)
    newer = types.ModuleType("verifiers")  # 0.4's package root: verifiers.v1 only
    newer.__version__ = "0.4.0"
    monkeypatch.setitem(sys.modules, "verifiers", newer)
    with pytest.raises(MissingDependencyError, match=r"verifiers 0.4.0 has no vf.MultiTurnEnv"):
        sample_verifiers_episodes(env, varied_model, tokenizer, [], 1, params, 20)


@pytest.mark.slow
def test_two_turns_on_the_real_bpe_tokenizer_keep_the_sampled_tokens(smollm2_dir):
    from grpokit.models import load_model, load_tokenizer

    model, tokenizer = load_model(smollm2_dir).eval(), load_tokenizer(smollm2_dir)
    recorder, states = state_recorder()
    env = Quiz(dataset=questions("Say hi.", "Count to 3."), max_turns=2, rubric=vf.Rubric(funcs=[recorder]))
    rows = env.get_dataset().to_list()
    episodes, truncated, rewards, stats = sample_verifiers_episodes(
        env, model, tokenizer, rows, 2, SamplingParams(max_new_tokens=24), max_tokens=120,
        generator=torch.Generator().manual_seed(0))
    assert sum(stats.model_turns) > len(episodes)
    for i, episode in enumerate(episodes):
        assert episode.prompt_ids == encode_prompt(rows[i // 2]["prompt"], tokenizer, "row")
        check_against_trajectory(episode, states[int(rewards[i])], stats.errors[i], tokenizer)
        text = tokenizer.decode(episode.context_ids)
        if episode.model_turns == 2:  # the environment's message is SmolLM2's ChatML rendering of it
            assert "<|im_end|>\n<|im_start|>user\nTry again (1).<|im_end|>\n<|im_start|>assistant\n" in text
    check_truncation(episodes, truncated, tokenizer.eos_token_id)


def grpo_args(tmp_path, **overrides):
    from grpokit import GRPOConfig

    return GRPOConfig(**{**dict(output_dir=str(tmp_path), max_steps=2, prompts_per_step=2, num_generations=2,
                                max_completion_length=120, learning_rate=1e-3, save_steps=0, beta=0.0),
                         **overrides})


def test_grpo_trains_on_a_multi_turn_env_unchanged_its_rubric_the_reward(record_steps, varied_model, tokenizer, tmp_path):
    from grpokit import GRPOTrainer

    env = Quiz(dataset=questions("Count to 3.", "Say hi.", "Spell cat.", "Name a dog."),
               rubric=vf.Rubric(funcs=[lambda completion: float(len(completion))]))
    seen = record_steps()
    before = [p.detach().clone() for p in varied_model.parameters()]
    trainer = GRPOTrainer(model=varied_model, processing_class=tokenizer, args=grpo_args(tmp_path),
                          environment_factory=env, callbacks=[seen])
    trainer.train(show_progress=False)
    assert len(trainer.rows) == 4  # the environment's own dataset
    for batch, metrics in zip(seen.batches, seen.metrics):
        # the reward is the rubric's: the number of messages of each episode's completion
        assert batch.rewards.names == ["Quiz"]
        assert batch.rewards.total.tolist() == [float(len(c)) for c in batch.rollout.conversations]
        assert metrics["agent/turns_max"] > 1
        environment = batch.rollout.completion_mask.bool() & ~batch.rollout.sampled_mask.bool()
        assert environment.any() and (batch.loss_mask[environment] == 0).all()
    assert any(not torch.equal(a, b) for a, b in zip(before, varied_model.parameters()))


def test_grpo_trains_on_a_tool_env_from_a_load_environment_function(record_steps, tokenizer, tmp_path):
    from grpokit import GRPOTrainer

    def correct(completion, answer) -> float:
        return float(completion[-1].content == f"<answer>{answer}</answer>")

    def load_environment():
        return vf.ToolEnv(tools=[add], dataset=questions("add 2 and 3", "add 4 and 1", answers=["5", "5"]),
                          max_turns=3, rubric=vf.Rubric(funcs=[correct]))

    env = load_environment()
    model, _ = tool_calling_model(tokenizer, env, env.get_dataset().to_list())
    seen = record_steps()
    trainer = GRPOTrainer(model=model, processing_class=tokenizer, environment_factory=load_environment,
                          args=grpo_args(tmp_path, num_generations=4), callbacks=[seen])
    trainer.train(show_progress=False)
    metrics = seen.metrics[0]
    assert metrics["agent/tool_calls"] > 0 and metrics["reward/ToolEnv/mean"] > 0
