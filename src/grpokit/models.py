"""Load and save causal LMs; build the embedded default model and its character tokenizer.

The embedded default is created here, never downloaded: a standard transformers Llama causal LM
with a character-level ``PreTrainedTokenizerFast`` whose reasoning tags are single tokens. Both
are written with ``save_pretrained`` so ``AutoModelForCausalLM`` / ``AutoTokenizer`` load them.
"""

from __future__ import annotations

import shutil
import string
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    LlamaConfig,
    LlamaForCausalLM,
)

from grpokit.distributed import local_device
from grpokit.errors import ModelLoadError

PAD, EOS, BOS = "<pad>", "<eos>", "<bos>"
REASONING_TAGS = ("<reasoning>", "</reasoning>", "<answer>", "</answer>")
CHARACTERS = string.digits + string.ascii_letters + string.punctuation + " \n"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def pick_device(preference: str = "auto") -> torch.device:
    """CUDA when present (or asked for), else CPU; under torchrun 'auto' is the process's own
    GPU (``cuda:LOCAL_RANK``)."""
    if preference == "auto":
        return local_device()
    return torch.device(preference)


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


def check_model_dir(path: str | Path) -> Path:
    """Raise :class:`ModelLoadError` unless ``path`` holds a saved transformers model."""
    path = Path(path)
    if not path.is_dir():
        where = "" if path.is_absolute() else f" (looked in {Path.cwd()})"
        raise ModelLoadError(f"model path {str(path)!r} is not a directory{where}; expected a "
                             "save_pretrained model directory (config.json + weights), or model: embedded")
    if not (path / "config.json").is_file():
        found = sorted(p.name for p in path.iterdir())[:10]
        raise ModelLoadError(f"model path {str(path)!r} has no config.json, so it is not a "
                             f"transformers model directory (found: {found})")
    return path


def load_pretrained(cls, path: str | Path, what: str = "model", **kwargs):
    """``cls.from_pretrained(path, **kwargs)``; any failure (a truncated or garbage weights file,
    a broken config.json, an unknown architecture) becomes a :class:`ModelLoadError` naming the
    directory, its files and what the loader said."""
    path = check_model_dir(path)
    try:
        return cls.from_pretrained(path, **kwargs)
    except Exception as error:  # the loader's own reason, whatever the file
        files = ", ".join(f"{p.name} ({p.stat().st_size:,} bytes)" for p in sorted(path.iterdir())
                          if p.is_file())
        raise ModelLoadError(f"cannot load the {what} in {str(path)!r}: {type(error).__name__}: "
                             f"{str(error)[:300]}. Its files: {files}. A file may be truncated or "
                             f"not written by save_pretrained; save the model again") from error


def load_model(path: str | Path, device: torch.device | None = None) -> PreTrainedModel:
    """Load a causal LM from a local directory in float32 (bfloat16 stays opt-in)."""
    model = load_pretrained(AutoModelForCausalLM, path, dtype=torch.float32)
    return model.to(device or pick_device())


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local directory and make sure it can pad."""
    tokenizer = load_pretrained(AutoTokenizer, path, "tokenizer")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: str | Path,
               state_dict: dict | None = None) -> Path:
    """Write ``model`` (or ``state_dict`` as its weights) and ``tokenizer`` as a
    ``save_pretrained`` directory, atomically.

    The files go to a sibling temporary directory that is renamed into place at the end, so a
    crash never leaves a half-written checkpoint under ``path``.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, state_dict=state_dict)
    tokenizer.save_pretrained(tmp)
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return path


def create_embedded_default(path: str | Path, seed: int = 0, **model_kwargs) -> Path:
    """Create the untrained embedded default (model + tokenizer) at ``path``."""
    tokenizer = build_char_tokenizer()
    model = create_tiny_model(tokenizer, seed=seed, **model_kwargs)
    return save_model(model, tokenizer, path)
