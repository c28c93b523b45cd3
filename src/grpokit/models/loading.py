"""Loading and saving causal LMs from local directories, with errors that name the directory,
its files and what to do; picking the device.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from grpokit.parallel.ranks import local_device
from grpokit.errors import ModelLoadError


def pick_device(preference: str = "auto") -> torch.device:
    """CUDA when present (or asked for), else CPU; under torchrun 'auto' is the process's own
    GPU (``cuda:LOCAL_RANK``)."""
    if preference == "auto":
        return local_device()
    return torch.device(preference)


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


def other_process_alive(pid: int) -> bool:
    """True when another live process has this pid (it may be writing right now)."""
    if pid == os.getpid():  # this process's own writes clean up after themselves
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: str | Path,
               state_dict: dict | None = None) -> Path:
    """Write ``model`` (or ``state_dict`` as its weights) and ``tokenizer`` as a
    ``save_pretrained`` directory, atomically.

    The files go to a sibling temporary directory that is renamed into place at the end, so a
    crash never leaves a half-written checkpoint under ``path``.
    """
    path = Path(path)
    for stale in path.parent.glob(f"{path.name}.tmp*"):  # left by a save that crashed (or this one)
        pid = stale.name.rpartition("-")[2]
        if not (pid.isdigit() and other_process_alive(int(pid))):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    model.save_pretrained(tmp, state_dict=state_dict)
    tokenizer.save_pretrained(tmp)
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return path


