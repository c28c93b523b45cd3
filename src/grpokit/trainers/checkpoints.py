"""Checkpoints that resume a run exactly, written so that a crash never leaves half of one.

``checkpoint-N/`` holds

- the model as a ``save_pretrained`` directory with its tokenizer (only the adapters under
  LoRA), and each other model that training changes in a subdirectory (``value_model/`` for
  PPO, ``reference/`` for iterative GRPO);
- ``trainer_state.pt``: the step, the optimizer, the scheduler, the RNG states (python,
  numpy, torch, CUDA, and the generators the trainer owns), the data position, the metrics
  history and the trainer's counters, loaded with ``torch.load(weights_only=True)``;
- ``COMPLETE``, written last.

Everything is written into ``checkpoint-N.tmp-<pid>/``, flushed to disk (``fsync``), marked
``COMPLETE`` and then renamed to ``checkpoint-N`` (a rename within one directory is atomic), so a
directory named ``checkpoint-N`` is always whole. A save that fails (a full disk) removes its
temporary directory and raises :class:`CheckpointError`; older checkpoints are never touched
until a newer one is complete. :func:`latest_valid_checkpoint` takes the newest complete one and
removes the temporary directories of processes that died while saving.

Test hook: ``GRPOKIT_TEST_PAUSE_IN_SAVE="<step>:<seconds>"`` makes the save of ``checkpoint-<step>``
sleep after the model files are written and before the trainer state and the marker, so a test
can kill the process in the middle of a save (``tests/test_checkpoint_crash.py``).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file

from grpokit.errors import CheckpointError
from grpokit.models.loading import other_process_alive

PREFIX = "checkpoint-"
MARKER = "COMPLETE"
STATE_FILE = "trainer_state.pt"
PAUSE_ENV = "GRPOKIT_TEST_PAUSE_IN_SAVE"
_TMP = re.compile(r"^checkpoint-\d+\.tmp-(\d+)")


# ------------------------------------------------------------------------- finding checkpoints


def checkpoint_step(path: str | Path) -> int | None:
    """The N of a ``checkpoint-N`` directory name; None for any other name.

    >>> [checkpoint_step(name) for name in ("runs/x/checkpoint-12", "checkpoint-12.tmp-7", "model")]
    [12, None, None]
    """
    name = Path(path).name
    digits = name.removeprefix(PREFIX)
    return int(digits) if name.startswith(PREFIX) and digits.isdigit() else None


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """The complete ``checkpoint-N`` directories of ``output_dir``, oldest (smallest N) first."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [p for p in out.iterdir() if checkpoint_step(p) is not None and (p / MARKER).is_file()]
    return sorted(found, key=checkpoint_step)


def latest_valid_checkpoint(output_dir: str | Path, max_step: int | None = None) -> Path | None:
    """The complete checkpoint with the largest step (at most ``max_step``), or None; stale
    temporary directories (left by a process that died while saving) are removed first."""
    remove_stale_tmp(output_dir)
    complete = [p for p in complete_checkpoints(output_dir)
                if max_step is None or checkpoint_step(p) <= max_step]
    return complete[-1] if complete else None


def remove_stale_tmp(output_dir: str | Path) -> list[Path]:
    """Remove ``checkpoint-N.tmp-<pid>*`` directories whose process is gone; return them."""
    out, removed = Path(output_dir), []
    if not out.is_dir():
        return removed
    for path in out.iterdir():
        match = _TMP.match(path.name)
        if match and not other_process_alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def resolve_resume(resume_from_checkpoint: bool | str | Path | None, output_dir: str | Path) -> Path | None:
    """The checkpoint a run resumes from: ``True`` means the latest in ``output_dir`` (an error
    when there is none, as in TRL), a path means that checkpoint, ``None``/``False`` none."""
    if resume_from_checkpoint is None or resume_from_checkpoint is False:
        return None
    if resume_from_checkpoint is True:
        latest = latest_valid_checkpoint(output_dir)
        if latest is None:
            raise CheckpointError(f"resume_from_checkpoint=True but {str(output_dir)!r} holds no complete "
                                  f"checkpoint-N directory; train without resuming, or set save_steps")
        return latest
    path = Path(resume_from_checkpoint)
    if not (path / MARKER).is_file():
        raise CheckpointError(f"cannot resume from {str(path)!r}: it is not a complete checkpoint "
                              f"(no {MARKER} marker; an interrupted save or not a checkpoint-N directory)")
    return path


# ------------------------------------------------------------------------------------ saving


def write_checkpoint(output_dir: str | Path, step: int, model, tokenizer, trainer_state: dict[str, Any],
                     extra_models: dict[str, Any] | None = None, keep_last: int | None = None,
                     weights: dict[str, Any] | None = None) -> Path:
    """Write ``output_dir/checkpoint-<step>`` atomically; keep only the newest ``keep_last`` up to
    ``step`` (later ones belong to an earlier run in the same directory and are left alone).
    ``weights``: the model's full state dict when the model is sharded (FSDP2).

    An existing ``checkpoint-<step>`` is replaced only once the new one is complete.
    """
    out = Path(output_dir)
    target = out / f"{PREFIX}{step}"
    tmp = out / f"{target.name}.tmp-{os.getpid()}"
    try:
        _write(tmp, step, model, tokenizer, trainer_state, extra_models or {}, weights)
        _move_into_place(tmp, target)
    except Exception as error:
        shutil.rmtree(tmp, ignore_errors=True)
        earlier = complete_checkpoints(out)
        raise CheckpointError(f"could not write {target}: {error}; nothing of it was left behind, and "
                              f"the latest complete checkpoint ({earlier[-1].name if earlier else 'none'}) "
                              f"is intact") from error
    prune_checkpoints(out, keep_last, step)
    return target


def _write(tmp: Path, step: int, model, tokenizer, trainer_state: dict, extra_models: dict,
           weights: dict | None) -> None:
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, state_dict=weights)
    tokenizer.save_pretrained(tmp)
    for name, each in extra_models.items():
        each.save_pretrained(tmp / name)
        tokenizer.save_pretrained(tmp / name)
    _test_pause(step)
    torch.save(trainer_state, tmp / STATE_FILE)
    for path in sorted(tmp.rglob("*"), reverse=True):  # files, then their directories
        _fsync(path)
    (tmp / MARKER).write_text(json.dumps({"step": step}) + "\n")
    _fsync(tmp / MARKER)
    _fsync(tmp)


def _move_into_place(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; an old ``target`` is moved aside first, removed after."""
    old = None
    if target.exists():
        old = target.with_name(f"{target.name}.tmp-{os.getpid()}.old")
        target.rename(old)
    tmp.rename(target)
    _fsync(target.parent)
    if old is not None:
        shutil.rmtree(old)


def prune_checkpoints(output_dir: str | Path, keep_last: int | None, up_to_step: int) -> list[Path]:
    """Of the complete checkpoints up to ``up_to_step``, remove all but the newest ``keep_last``
    (None or 0: keep all).

    Each is renamed to a temporary name before removal, so a crash mid-removal never leaves a
    ``checkpoint-N`` that looks complete but is not.
    """
    if not keep_last:
        return []
    mine = [p for p in complete_checkpoints(output_dir) if checkpoint_step(p) <= up_to_step]
    removed = mine[:-keep_last]
    for path in removed:
        doomed = path.with_name(f"{path.name}.tmp-{os.getpid()}.old")
        path.rename(doomed)
        shutil.rmtree(doomed)
    return removed


def _fsync(path: Path) -> None:
    """Flush a file's or a directory's entries to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _test_pause(step: int) -> None:
    """The test hook described in the module docstring."""
    spec = os.environ.get(PAUSE_ENV)
    if spec:
        pause_step, seconds = spec.split(":")
        if int(pause_step) == step:
            time.sleep(float(seconds))


# ----------------------------------------------------------------------------------- loading


def load_checkpoint(path: str | Path, model, optimizer, scheduler,
                    extra_models: dict[str, Any] | None = None, engine=None) -> dict[str, Any]:
    """Load the weights, optimizer and scheduler of a checkpoint in place; return its trainer
    state (``step``, ``rng``, ``history`` and the trainer's own entries). ``engine``
    (``grpokit.parallel.training_engine.Engine``) loads into a sharded model and optimizer."""
    path = Path(path)
    if not (path / MARKER).is_file():
        raise CheckpointError(f"{str(path)!r} is not a complete checkpoint (no {MARKER} marker)")
    try:
        state = torch.load(path / STATE_FILE, weights_only=True)
    except Exception as error:  # a truncated or foreign file
        raise CheckpointError(f"cannot read {path / STATE_FILE} ({type(error).__name__}: {str(error)[:200]}); "
                              f"the checkpoint is damaged: resume from an earlier checkpoint-N directory, "
                              f"or move this one away") from error
    try:
        if engine is not None and engine.sharded:
            engine.load_full_state_dict(read_weights(path))
        else:
            load_weights(model, path)
        for name, each in (extra_models or {}).items():
            load_weights(each, path / name)
        if engine is not None:
            engine.load_optimizer_state(optimizer, state["optimizer"])
        else:
            optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except (ValueError, KeyError, RuntimeError, OSError) as error:
        raise CheckpointError(f"checkpoint {str(path)!r} does not fit this trainer, or a file of it is "
                              f"damaged (was it written with another model, LoRA setting or config?): "
                              f"{type(error).__name__}: {str(error)[:300]}") from error
    return state


def load_weights(model, directory: str | Path) -> None:
    """Copy the weights saved in a ``save_pretrained`` directory into ``model`` in place.

    Under LoRA the directory holds the adapters; otherwise every weight must be found, except
    those tied to a loaded one (the output embedding shared with the input embedding).
    """
    directory = Path(directory)
    if isinstance(model, PeftModel):
        result = set_peft_model_state_dict(model, load_file(directory / "adapter_model.safetensors"))
        if result.unexpected_keys:
            raise CheckpointError(f"{directory}: adapter weights {result.unexpected_keys[:5]} do not fit "
                                  f"the model")
        return
    state = read_weights(directory)
    result = model.load_state_dict(state, strict=False)
    own = model.state_dict()
    loaded = {tensor.data_ptr() for name, tensor in own.items() if name in state}
    untied = [k for k in result.missing_keys if own[k].data_ptr() not in loaded]
    if untied or result.unexpected_keys:
        raise CheckpointError(f"{directory}: weights do not fit the model (missing {untied[:5]}, "
                              f"unexpected {result.unexpected_keys[:5]})")


def read_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a ``save_pretrained`` directory's safetensors files."""
    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{directory} holds no .safetensors weights")
    weights = {}
    for file in files:
        try:
            weights.update(load_file(file))
        except Exception as error:  # safetensors' own error for a truncated or garbage file
            raise CheckpointError(f"cannot read {file} ({type(error).__name__}: {str(error)[:200]}); the "
                                  f"file is damaged: resume from an earlier checkpoint-N directory") from error
    return weights


# --------------------------------------------------------------------------------------- RNG


def rng_state(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Every random state a run draws from: python, numpy, torch (CPU and CUDA) and ``generators``."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), position, has_gauss, gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }


def restore_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    """Put back what :func:`rng_state` saved."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, generator in (generators or {}).items():
        generator.set_state(state["generators"][name])


# ------------------------------------------------------------------------------------ metrics


def truncate_jsonl(path: str | Path, step: int) -> None:
    """Keep the lines of a per-step log (``{"step": ...}`` objects) up to ``step``.

    A torn last line (a crash in the middle of a write) is dropped as well.

    >>> import tempfile
    >>> log = Path(tempfile.mkdtemp()) / "metrics.jsonl"
    >>> _ = log.write_text('{"step": 1}\\n{"step": 2}\\n{"step": 3}\\n{"st')
    >>> truncate_jsonl(log, 2); log.read_text()
    '{"step": 1}\\n{"step": 2}\\n'
    """
    path = Path(path)
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("step", 0) <= step:
            kept.append(line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)
