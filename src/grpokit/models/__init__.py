"""Models: loading and saving local directories (``loading``), the embedded default built in code
(``embedded``), and models by name, including pretrained ones converted from a package's GGUF file
(``builtin``)."""

from grpokit.errors import ModelLoadError
from grpokit.models.builtin import BUILTIN_MODELS, builtin_model_dir, import_gguf, model_cache_dir, model_path
from grpokit.models.embedded import (
    BOS,
    CHARACTERS,
    CHAT_TEMPLATE,
    EOS,
    PAD,
    REASONING_TAGS,
    build_char_tokenizer,
    create_embedded_default,
    create_tiny_model,
)
from grpokit.models.loading import check_model_dir, load_model, load_pretrained, load_tokenizer, pick_device, save_model

__all__ = ["BOS", "BUILTIN_MODELS", "CHARACTERS", "CHAT_TEMPLATE", "EOS", "ModelLoadError", "PAD", "REASONING_TAGS",
           "build_char_tokenizer", "builtin_model_dir", "check_model_dir", "create_embedded_default",
           "create_tiny_model", "import_gguf", "load_model", "load_pretrained", "load_tokenizer",
           "model_cache_dir", "model_path", "pick_device", "save_model"]
