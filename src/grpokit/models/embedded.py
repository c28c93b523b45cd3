"""The embedded default: a standard transformers Llama causal LM with a character-level
``PreTrainedTokenizerFast`` whose reasoning tags are single tokens, created in code and never
downloaded. Both are written with ``save_pretrained``, so ``AutoModelForCausalLM`` and
``AutoTokenizer`` load them.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from grpokit.models.loading import save_model

PAD, EOS, BOS = "<pad>", "<eos>", "<bos>"
REASONING_TAGS = ("<reasoning>", "</reasoning>", "<answer>", "</answer>")
CHARACTERS = string.digits + string.ascii_letters + string.punctuation + " \n"
# one line per message; an assistant turn ends with EOS (where sampling stops, and where a
# multi-turn episode cuts turns); tools are listed by name and argument names, which is all a
# model of this size can read
CHAT_TEMPLATE = (
    "{% if tools %}<|tools|>{% for t in tools %}{{ t['function']['name'] }}"
    "({{ t['function']['parameters']['properties'] | join(',') }}){{ ' ' if not loop.last }}{% endfor %}{{ '\\n' }}{% endif %}"
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token if m['role'] == 'assistant' }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_char_tokenizer(extra_tokens: tuple[str, ...] = REASONING_TAGS) -> PreTrainedTokenizerFast:
    """A character-level tokenizer; each of ``extra_tokens`` is one token.

    >>> tok = build_char_tokenizer()
    >>> tok.convert_ids_to_tokens(tok("<answer>12</answer>")["input_ids"])
    ['<answer>', '1', '2', '</answer>']
    """
    specials = [PAD, EOS, BOS]
    vocab = {token: i for i, token in enumerate(specials + list(extra_tokens) + list(CHARACTERS))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=PAD))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in extra_tokens])
    backend.add_special_tokens(specials)
    tokenizer = PreTrainedTokenizerFast(  # characters outside the vocabulary map to PAD (its unk)
        tokenizer_object=backend, pad_token=PAD, eos_token=EOS, bos_token=BOS, unk_token=PAD
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def create_tiny_model(
    tokenizer: PreTrainedTokenizerBase,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 384,
    max_positions: int = 512,
    seed: int = 0,
) -> PreTrainedModel:
    """A randomly initialised Llama causal LM sized for a CPU (about 0.8M parameters by default).

    Llama rather than Qwen2: transformers maps the ``qwen2`` model type to its own BPE tokenizer
    class, which would replace the character tokenizer when ``AutoTokenizer`` loads the directory.
    """
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    return LlamaForCausalLM(config)


def create_embedded_default(path: str | Path, seed: int = 0, **model_kwargs) -> Path:
    """Create the untrained embedded default (model + tokenizer) at ``path``."""
    tokenizer = build_char_tokenizer()
    model = create_tiny_model(tokenizer, seed=seed, **model_kwargs)
    return save_model(model, tokenizer, path)
