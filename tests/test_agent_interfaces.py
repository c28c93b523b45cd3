"""TRL's agent interfaces ported unchanged: environment_factory= (reset, tools from public methods,
get_reward, environments= for rewards), rollout_func=, and YAML's environment / rollout_func;
tools that hang or kill their process during a GRPO step.

The examples are written the way TRL's GRPO documentation writes them. They train a tiny model
that a few hundred SFT steps taught to call ``increment`` (the fixture), so the tool path runs.
"""

import os
import random
import sys
import time

import pytest
import torch

from grpokit import GRPOConfig, GRPOTrainer
from grpokit.errors import ConfigError
from grpokit.models import build_char_tokenizer, create_tiny_model
from grpokit.models.loading import save_model



class IncrementEnv:
    # Reserved methods
    def reset(self, **kwargs) -> str | None:  # required; called at the start of each rollout
        self.counter = 0
        self.target = random.randint(1, 6)  # self-sample the task
        return f"Increment the counter by {self.target}."  # returned string becomes the prompt

    def get_reward(self) -> float:  # optional: the environment scores itself from its own state
        return float(self.counter == self.target)

    # Public methods (exposed as tools)
    def increment(self, step: int) -> int:
        """
        Increment the internal counter.

        Args:
            step: Value to add to the counter.

        Returns:
            The updated counter value.
        """
        self.counter += step
        return self.counter


def increment(step: int) -> int:
    """
    Increment the internal counter.

    Args:
        step: Value to add to the counter.
    """
    return step


@pytest.fixture(scope="module")
def tool_model(tmp_path_factory):
    """A tiny model SFT'd on episodes that call ``increment`` and then answer."""
    from grpokit.config import SFTConfig
    from grpokit.trainers.sft import SFTTrainer

    tokenizer = build_char_tokenizer()
    base = save_model(create_tiny_model(tokenizer, hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
                                        intermediate_size=128), tokenizer, tmp_path_factory.mktemp("tool") / "base")
    rng = random.Random(0)
    rows = []
    for _ in range(256):
        n = rng.randint(1, 6)
        call = '<tool_call>{"name": "increment", "arguments": {"step": %d}}</tool_call>' % n
        rows.append({"prompt": [{"role": "user", "content": f"Increment the counter by {n}."}],
                     "completion": [{"role": "assistant", "content": call},
                                    {"role": "tool", "name": "increment", "content": str(n)},
                                    {"role": "assistant", "content": f"<answer>{n}</answer>"}]})
    args = SFTConfig(output_dir=str(base.parent / "sft"), learning_rate=5e-3, max_steps=150, warmup_steps=10,
                     per_device_train_batch_size=16, max_length=160, save_steps=0)
    return SFTTrainer(str(base), args, rows, tools=[increment]).train(show_progress=False)["model_dir"]


def grpo_args(tmp_path, **overrides) -> GRPOConfig:
    settings = dict(output_dir=str(tmp_path / "grpo"), max_steps=2, prompts_per_step=2, num_generations=4,
                    max_completion_length=96, max_tool_calling_iterations=1, learning_rate=1e-3, save_steps=0,
                    beta=0.0)
    return GRPOConfig(**{**settings, **overrides})


def test_an_environment_that_owns_its_data_and_its_reward_trains_without_dataset_or_reward_funcs(record_steps, tool_model,
                                                                                                 tmp_path):
    seen = record_steps()
    trainer = GRPOTrainer(model=tool_model, args=grpo_args(tmp_path), environment_factory=IncrementEnv,
                          callbacks=[seen])
    trainer.train(show_progress=False)
    assert len(trainer.agents.pool.instances) == 8  # one per episode of a step, reused across steps
    for batch, metrics in zip(seen.batches, seen.metrics):
        assert "reward/IncrementEnv/mean" in metrics and metrics["agent/tool_calls"] > 0
        prompts = batch.rollout.reward_kwargs["prompts"]
        assert all(p[-1]["content"].startswith("Increment the counter by ") for p in prompts)
        environments = batch.rollout.reward_kwargs["environments"]
        rewards = batch.rewards.per_func[:, batch.rewards.names.index("IncrementEnv")].tolist()
        # the reward is the environment's own verdict on the state the episode's tool calls left
        assert rewards == [float(e.counter == e.target) for e in environments]
    assert any(e.counter for e in trainer.agents.pool.instances)  # the tools reached the instances


def test_dataset_columns_reach_reset_and_reward_functions_get_the_environments(tool_model, tmp_path):
    class TargetEnv:
        def reset(self, target, **kwargs) -> None:  # the row's `target` column arrives as a keyword argument
            self.counter, self.target, self.prompt = 0, target, kwargs["prompt"]

        def increment(self, step: int) -> int:
            """
            Increment the internal counter.

            Args:
                step: Value to add to the counter.
            """
            self.counter += step
            return self.counter

    received = []

    def reached_target(completions, environments, target, **kwargs):
        received.append((environments, target))
        return [float(env.counter == t) for env, t in zip(environments, target)]

    dataset = [{"prompt": [{"role": "user", "content": f"Increment the counter by {i}."}], "target": i}
               for i in range(1, 7)]
    trainer = GRPOTrainer(model=tool_model, reward_funcs=reached_target, args=grpo_args(tmp_path, max_steps=1),
                          train_dataset=dataset, environment_factory=TargetEnv)
    trainer.train(show_progress=False)
    environments, targets = received[0]
    assert len(environments) == 8 and [env.target for env in environments] == targets
    assert all(env.prompt[-1]["content"] == f"Increment the counter by {env.target}." for env in environments)


def test_a_rollout_function_written_for_trl_trains_and_its_extra_fields_reach_the_rewards(record_steps, tiny_model,
                                                                                         char_tokenizer, tmp_path):
    def rollout_func(prompts, trainer):
        tokenizer = trainer.processing_class
        prompt_ids, completion_ids, logprobs, env_masks = [], [], [], []
        for prompt in prompts:
            ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            out = trainer.model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=True, output_scores=True,
                                         return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id)
            new = out.sequences[0, len(ids):].tolist()
            # an "environment" appends two tokens of feedback, masked out of the loss
            feedback = tokenizer("ok", add_special_tokens=False)["input_ids"]
            prompt_ids.append(ids)
            completion_ids.append(new + feedback)
            logprobs.append([torch.log_softmax(s[0], -1)[t].item() for s, t in zip(out.scores, new)] + [0.0, 0.0])
            env_masks.append([1] * len(new) + [0, 0])
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": logprobs,
                "env_mask": env_masks, "source": ["my-loop"] * len(prompts)}

    received, seen = [], record_steps()

    def reward(prompts, completions, source, **kwargs):
        received.append((prompts, source))
        return [float(len(c)) for c in completions]

    args = grpo_args(tmp_path, max_steps=2)
    trainer = GRPOTrainer(model=tiny_model, reward_funcs=reward, args=args, processing_class=char_tokenizer,
                          train_dataset=[{"prompt": f"sum a{i}:"} for i in range(4)], rollout_func=rollout_func,
                          callbacks=[seen])
    trainer.train(show_progress=False)
    prompts, source = received[0]
    assert source == ["my-loop"] * 8 and prompts[0] == prompts[3] and prompts[3] != prompts[4]  # G in a row
    batch = seen.batches[0]
    feedback = batch.rollout.completion_mask.bool() & ~batch.rollout.sampled_mask.bool()
    assert feedback.sum() == 16 and (batch.loss_mask[feedback] == 0).all()  # 2 feedback tokens per completion


def test_contract_breaches_are_one_line_errors(tool_model, tiny_model, char_tokenizer, tmp_path):
    rows = [{"prompt": "sum a1:"}]
    bad = lambda prompts, trainer: {"prompt_ids": [[1]] * len(prompts), "completion_ids": [[2]] * len(prompts)}  # noqa: E731
    trainer = GRPOTrainer(model=tiny_model, reward_funcs=[lambda completions, **kw: [0.0] * len(completions)],
                          args=grpo_args(tmp_path, max_steps=1), processing_class=char_tokenizer, train_dataset=rows,
                          rollout_func=bad)
    with pytest.raises(ConfigError, match=r"rollout_func must return keys \['logprobs'\]"):
        trainer.train(show_progress=False)

    class NoReset:
        pass

    with pytest.raises(ConfigError, match="its environments need a reset"):
        GRPOTrainer(model=tool_model, args=grpo_args(tmp_path), environment_factory=NoReset,
                    reward_funcs=[lambda completions, **kw: [0.0] * len(completions)])
    with pytest.raises(ConfigError, match="cannot be combined with tools"):
        GRPOTrainer(model=tool_model, args=grpo_args(tmp_path), environment_factory=IncrementEnv, rollout_func=bad)


def test_the_yaml_keys_name_an_environment_factory_by_import_path(tool_model, tmp_path, monkeypatch):
    (tmp_path / "my_envs.py").write_text(
        "import random\n"
        "class Counter:\n"
        "    def reset(self, **kwargs):\n"
        "        self.counter, self.target = 0, random.randint(1, 6)\n"
        "        return f'Increment the counter by {self.target}.'\n"
        "    def get_reward(self) -> float:\n"
        "        return float(self.counter == self.target)\n"
        "    def increment(self, step: int) -> int:\n"
        "        '''Increment the internal counter.\n\n        Args:\n            step: Value to add.\n        '''\n"
        "        self.counter += step\n"
        "        return self.counter\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from grpokit.config import load_config

    (tmp_path / "run.yaml").write_text("grpo:\n  environment: my_envs:Counter\n  max_steps: 1\n")
    cfg = load_config(tmp_path / "run.yaml")
    args = grpo_args(tmp_path, max_steps=1, environment=cfg.grpo.environment)
    summary = GRPOTrainer(model=tool_model, args=args).train(show_progress=False)
    assert summary["steps"] == 1 and cfg.grpo.environment == "my_envs:Counter"
    sys.modules.pop("my_envs", None)


def test_a_tool_that_kills_its_process_or_hangs_costs_its_episode_an_error_not_the_step(record_steps, tool_model, tmp_path):
    def increment(step: int) -> int:  # noqa: F811 - the name the model calls
        """
        Increment the internal counter.

        Args:
            step: Value to add to the counter.
        """
        if step % 2:
            os._exit(3)  # kills whatever process runs it
        time.sleep(30)  # and the others hang
        return step

    seen = record_steps()
    rows = [{"prompt": [{"role": "user", "content": f"Increment the counter by {i}."}]} for i in range(1, 7)]
    args = grpo_args(tmp_path, max_steps=1, tool_isolation="process", tool_timeout_s=1.0, max_completion_length=200)
    GRPOTrainer(model=tool_model, reward_funcs=[lambda completions, **kw: [1.0] * len(completions)], args=args,
                train_dataset=rows, tools=[increment], callbacks=[seen]).train(show_progress=False)
    metrics = seen.metrics[0]
    assert metrics["agent/tool_calls"] > 0
    assert metrics["agent/tool_errors/crashed"] + metrics["agent/tool_errors/timeout"] == metrics["agent/tool_calls"]
    replies = [m["content"] for c in seen.batches[0].rollout.conversations for m in c if m.get("name") == "increment"]
    assert {"crashed its process (exit code 3)" in r or "did not answer within 1 s" in r for r in replies} == {True}


def test_per_turn_rewards_credit_each_turn_with_its_own_score_and_the_later_turns(record_steps, tool_model, tmp_path):
    from grpokit.rewards.step_scores import register_process_reward

    seen_steps = []

    @register_process_reward("test_called_then_answered")
    def called_then_answered(prompts, completions, steps, **kwargs):
        seen_steps.extend(steps)
        return [[float("<tool_call>" in turn) if k == 0 else float("<answer>" in turn) for k, turn in enumerate(row)]
                for row in steps]

    seen = record_steps()
    rows = [{"prompt": [{"role": "user", "content": f"Increment the counter by {i}."}]} for i in range(1, 7)]
    args = grpo_args(tmp_path, max_steps=1, process_reward="test_called_then_answered", process_steps="turns",
                     max_completion_length=200)
    GRPOTrainer(model=tool_model, args=args, train_dataset=rows, tools=[increment],
                callbacks=[seen]).train(show_progress=False)
    batch = seen.batches[0]
    # the steps are the model's turns, exactly the assistant messages of each episode
    assert seen_steps == [[m["content"] for m in c if m["role"] == "assistant"] for c in batch.rollout.conversations]
    assert any(len(row) == 2 for row in batch.step_rewards)
    for group in range(2):
        rows_ = range(4 * group, 4 * group + 4)
        scores = torch.tensor([s for i in rows_ for s in batch.step_rewards[i]])
        if scores.numel() < 2 or bool((scores == scores[0]).all()):
            continue
        normalised = ((scores - scores.mean()) / (scores.std() + 1e-4)).tolist()
        for i in rows_:
            mask = batch.rollout.sampled_mask[i].tolist()
            turn_of_token, turn = [], 0
            for t, m in enumerate(mask):
                turn_of_token.append(turn if m else None)
                if m and (t + 1 == len(mask) or not mask[t + 1]):
                    turn += 1
            mine = normalised[:len(batch.step_rewards[i])]
            normalised = normalised[len(batch.step_rewards[i]):]
            for t, k in enumerate(turn_of_token):
                if k is not None:  # a turn's tokens carry its own score and every later turn's
                    assert batch.advantages[i, t].item() == pytest.approx(sum(mine[k:]), abs=1e-5)
                else:
                    assert batch.loss_mask[i, t] == 0


def test_per_turn_rewards_need_episodes(tiny_model, char_tokenizer, tmp_path):
    with pytest.raises(ConfigError, match="process_steps: turns scores each model turn"):
        GRPOTrainer(model=tiny_model, args=grpo_args(tmp_path, process_reward="digit_sum_steps", process_steps="turns"),
                    processing_class=char_tokenizer, train_dataset=[{"prompt": "sum a1:"}])
