"""Calling reward functions the TRL way: one batch of completions scored by every function.

A reward function has the TRL signature ``fn(prompts, completions, **kwargs) ->
list[float | None]``: one reward per completion, ``None`` meaning "this reward
does not apply to this sample". :func:`score_completions` calls each function with

- ``prompts``: one per completion (each row's prompt repeated for its G completions),
- ``completions``: strings, or ``[{"role": "assistant", "content": text}]`` when
  that sample's prompt is a chat-message list,
- ``completion_ids``: list of token-id lists,
- every extra dataset column, one value per completion,
- ``trainer_state`` when the caller passes one.

A function that raises is called again one sample at a time to find the samples it fails on
(so a failing batch of N costs N more calls). With ``on_error="raise"`` (the default) the first
failing sample raises a :class:`~grpokit.errors.RewardFunctionError` naming the function, the
line of it that raised, the sample, its prompt and its completion (the function's own exception
is its ``__cause__``); with ``on_error="skip"`` those samples get None from that function and
``RewardBatch.errors`` counts them (logged as ``reward/<name>/errors``).

>>> def length(prompts, completions, **kwargs):
...     return [float(len(c)) for c in completions]
>>> def exact(prompts, completions, answer, **kwargs):
...     return [1.0 if c == a else None for c, a in zip(completions, answer)]
>>> batch = score_completions([length, exact], prompts=["2+2="], completions=["4", "five"],
...                           completion_ids=[[4], [9, 9]], columns={"answer": ["4"]})
>>> batch.names
['length', 'exact']
>>> batch.per_func
tensor([[1., 1.],
        [4., nan]])
>>> batch.total
tensor([2., 4.])
"""

from __future__ import annotations

import logging
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch

from grpokit.data import is_conversational
from grpokit.errors import RewardFunctionError
from grpokit.imports import user_frame
from grpokit.rewards.lookup import _RESERVED_KWARGS, RewardFunc, resolve_reward, reward_name

__all__ = [
    "RewardBatch",
    "RewardFunctionError",
    "reward_metrics",
    "score_completions",
]

logger = logging.getLogger("grpokit")



@dataclass
class RewardBatch:
    """Rewards for N completions from F reward functions.

    Attributes:
        per_func: ``(N, F)`` float32; NaN where a function returned None.
        total: ``(N,)`` float32; ``nansum`` over functions of ``weight * reward``.
            A completion for which every function returned None gets total 0.
        names: the F function names, in column order.
        errors: with ``on_error="skip"``, how many samples each function raised on (by name);
            None with ``on_error="raise"``.
    """

    per_func: torch.Tensor  # [N, F]
    total: torch.Tensor  # [N]
    names: list[str]
    errors: dict[str, int] | None = None


# ----------------------------------------------------------------------------- scoring


def score_completions(
    reward_funcs: Sequence[RewardFunc | str] | RewardFunc,
    prompts: Sequence[Any],
    completions: Sequence[Any],
    completion_ids: Sequence[Sequence[int]],
    columns: dict[str, Sequence[Any]] | None = None,
    weights: Sequence[float] | None = None,
    trainer_state: dict | None = None,
    on_error: Literal["raise", "skip"] = "raise",
) -> RewardBatch:
    """Call every reward function on N completions and combine the results.

    Completions must be grouped by prompt: those of prompt ``i`` are contiguous.
    ``prompts`` and each ``columns`` list hold either one value per completion
    (length N) or one value per prompt (length N / G); in the second case each
    value is repeated G times, as TRL does.

    Args:
        reward_funcs: callables (or names for :func:`resolve_reward`), or one callable.
        prompts: strings or chat-message lists.
        completions: generated texts, N of them.
        completion_ids: N token-id lists.
        columns: extra dataset columns, passed to every function as keywords.
        weights: one per function; default all 1.0.
        trainer_state: optional dict passed as the ``trainer_state`` keyword.
        on_error: what a function that raises does: ``"raise"`` the error (with a note naming
            the sample), or ``"skip"``: None for the samples it raises on.

    Returns:
        A :class:`RewardBatch`.
    """
    funcs = _as_func_list(reward_funcs)
    names = _unique_names([reward_name(f) for f in funcs])
    weight_tensor = _check_weights(weights, names)
    kwargs = _build_kwargs(prompts, completions, completion_ids, columns or {})
    if trainer_state is not None:
        kwargs["trainer_state"] = trainer_state
    if on_error not in ("raise", "skip"):
        raise ValueError(f"score_completions: on_error is {on_error!r}; expected 'raise' or 'skip'")
    called = [_call_one(f, name, kwargs, on_error) for f, name in zip(funcs, names)]
    columns_out = [values for values, _ in called]  # F lists of N
    per_func = torch.tensor(columns_out, dtype=torch.float32).reshape(len(funcs), -1).T  # [N, F]
    total = torch.nansum(per_func * weight_tensor, dim=1)  # [N]; all-None rows -> 0
    errors = {name: failed for name, (_, failed) in zip(names, called)} if on_error == "skip" else None
    return RewardBatch(per_func=per_func, total=total, names=names, errors=errors)


def _as_func_list(reward_funcs: Any) -> list[RewardFunc]:
    """Normalize the ``reward_funcs`` argument to a non-empty list of callables."""
    if callable(reward_funcs) or isinstance(reward_funcs, str):
        reward_funcs = [reward_funcs]
    funcs = [resolve_reward(f) for f in reward_funcs]
    if not funcs:
        raise ValueError("score_completions: reward_funcs is empty; expected at least one reward function")
    return funcs


def _unique_names(names: list[str]) -> list[str]:
    """Suffix repeated names with ``_2``, ``_3``... so metric keys do not collide.

    >>> _unique_names(["acc", "fmt", "acc"])
    ['acc', 'fmt', 'acc_2']
    """
    counts: dict[str, int] = {}
    unique = []
    for name in names:
        counts[name] = counts.get(name, 0) + 1
        unique.append(name if counts[name] == 1 else f"{name}_{counts[name]}")
    return unique


def _check_weights(weights: Sequence[float] | None, names: list[str]) -> torch.Tensor:
    """Return weights as a ``(F,)`` tensor, checking count and finiteness."""
    if weights is None:
        return torch.ones(len(names))
    weights = list(weights)
    if len(weights) != len(names):
        raise ValueError(
            f"score_completions: got {len(weights)} weights for {len(names)} reward functions "
            f"({', '.join(names)}); give one weight per reward function"
        )
    for name, w in zip(names, weights):
        if not _is_number(w) or not math.isfinite(float(w)):
            raise ValueError(f"score_completions: weight for '{name}' is {w!r} ({type(w).__name__}); expected a finite number")
    return torch.tensor([float(w) for w in weights])


def _build_kwargs(prompts, completions, completion_ids, columns) -> dict[str, list]:
    """Per-completion keyword lists, with prompts/columns repeated per completion."""
    n = len(completions)
    if len(completion_ids) != n:
        raise ValueError(f"score_completions: {n} completions but {len(completion_ids)} completion_ids; expected equal lengths")
    group = _group_size(len(prompts), n, "prompts")
    prompts = [p for p in prompts for _ in range(group)]
    kwargs = {
        "prompts": prompts,
        "completions": [_wrap(c, p) for c, p in zip(completions, prompts)],
        "completion_ids": [list(ids) for ids in completion_ids],
    }
    for key, values in columns.items():
        if key in _RESERVED_KWARGS:
            raise ValueError(f"score_completions: dataset column '{key}' clashes with the reward keyword '{key}'; rename the column")
        if len(values) != len(prompts) // group:
            raise ValueError(
                f"score_completions: column '{key}' has {len(values)} values; expected one per prompt "
                f"({len(prompts) // group}) to match 'prompts'"
            )
        kwargs[key] = [v for v in values for _ in range(group)]
    return kwargs


def _group_size(num_prompts: int, num_completions: int, what: str) -> int:
    """Completions per prompt, G, so that ``num_prompts * G == num_completions``."""
    if num_prompts == 0 or num_completions % num_prompts != 0:
        raise ValueError(
            f"score_completions: {num_completions} completions but {num_prompts} {what}; expected "
            f"one prompt per completion or per group of completions (N a multiple of the prompt count)"
        )
    return num_completions // num_prompts


def _wrap(completion: Any, prompt: Any) -> Any:
    """A string completion for a chat prompt becomes one assistant message."""
    if isinstance(completion, str) and is_conversational(prompt):
        return [{"role": "assistant", "content": completion}]
    return completion


def _call_one(fn: RewardFunc, name: str, kwargs: dict[str, Any], on_error: str) -> tuple[list[float], int]:
    """Call one reward function on shallow copies of the inputs; return its validated rewards
    and the number of samples it raised on (see the module docstring for ``on_error``)."""
    try:
        output = fn(**_fresh(kwargs))
    except Exception as error:  # found below, one sample at a time
        batch_error = error
    else:
        return _validate_output(output, name, kwargs), 0
    return _call_per_sample(fn, name, kwargs, on_error, batch_error)


def _fresh(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Shallow copies of the per-sample lists, so a function that mutates them harms nothing."""
    return {k: (list(v) if isinstance(v, list) else v) for k, v in kwargs.items()}


def _call_per_sample(fn: RewardFunc, name: str, kwargs: dict[str, Any], on_error: str,
                     batch_error: Exception) -> tuple[list[float], int]:
    """Call ``fn`` on each sample alone; a sample it raises on raises (``"raise"``) or scores
    NaN (``"skip"``). Every list in ``kwargs`` holds one value per sample."""
    n, values, failed = len(kwargs["completions"]), [], []
    for i in range(n):
        one = {k: ([v[i]] if isinstance(v, list) else v) for k, v in kwargs.items()}
        try:
            output = fn(**one)
        except Exception as error:
            if on_error == "raise":
                raise RewardFunctionError(
                    f"reward function '{name}' raised {type(error).__name__}: {_truncate(str(error))}"
                    f"{user_frame(error)} on sample {i} of {n}\n{_sample(kwargs, i)}\n{_FIX}") from error
            failed.append((i, error))
            values.append(math.nan)
        else:
            values.extend(_validate_output(output, name, one))
    if not failed:
        if on_error == "raise":  # only the whole batch fails: nothing to skip, so raise that
            raise RewardFunctionError(
                f"reward function '{name}' raised {type(batch_error).__name__}: {_truncate(str(batch_error))}"
                f"{user_frame(batch_error)} on a batch of {n} samples, though each sample alone scored "
                f"fine (does it assume a batch size?)") from batch_error
        logger.warning("reward function '%s' raised on a batch of %d samples (%s: %s) but not on any "
                       "sample alone; scored them one at a time", name, n, type(batch_error).__name__,
                       batch_error)
    else:
        first, error = failed[0]
        logger.warning("reward function '%s' raised on %d of %d samples (first: sample %d, %s: %s); they "
                       "score None", name, len(failed), n, first, type(error).__name__, error)
    return values, len(failed)


_FIX = ("Fix the function, or set reward_errors: skip (GRPOConfig.reward_errors) to score the samples it "
        "raises on None for it (counted as reward/<name>/errors); --debug shows the traceback.")


# -------------------------------------------------------------------------- validation


def _is_number(value: Any) -> bool:
    """True for int/float/bool and numpy scalars; False for strings, None, arrays."""
    return isinstance(value, (bool, np.bool_, numbers.Real))


def _validate_output(output: Any, name: str, kwargs: dict[str, Any]) -> list[float]:
    """Check a reward function's output; return floats with None -> NaN."""
    values = _output_as_list(output, name, len(kwargs["completions"]))
    floats = []
    for i, value in enumerate(values):
        if value is None:
            floats.append(math.nan)
        elif not _is_number(value) or not math.isfinite(float(value)):
            why = "is not finite" if _is_number(value) else "is not a number"
            raise RewardFunctionError(
                f"reward function '{name}' returned {value!r} ({type(value).__name__}) at index {i}, "
                f"which {why}; expected a finite int/float/bool or None (to skip the sample)\n"
                f"{_sample(kwargs, i)}"
            )
        else:
            floats.append(float(value))
    return floats


def _output_as_list(output: Any, name: str, n: int) -> list:
    """Turn list/tuple/1-D array/1-D tensor output into a list of length ``n``."""
    if isinstance(output, (torch.Tensor, np.ndarray)):
        if output.ndim != 1:
            raise RewardFunctionError(
                f"reward function '{name}' returned a {type(output).__name__} of shape {tuple(output.shape)}; "
                f"expected 1-D with {n} values, one per completion"
            )
        output = output.tolist()
    if not isinstance(output, (list, tuple)):
        raise RewardFunctionError(
            f"reward function '{name}' returned {type(output).__name__} ({_truncate(repr(output), 80)}); "
            f"expected a list of {n} floats (or None), one per completion"
        )
    if len(output) != n:
        raise RewardFunctionError(
            f"reward function '{name}' returned {len(output)} rewards for {n} completions; "
            f"expected one reward (float or None) per completion"
        )
    return list(output)


def _sample(kwargs: dict[str, Any], i: int) -> str:
    """Two lines showing the prompt and completion of sample ``i``, truncated."""
    prompt = _truncate(repr(kwargs["prompts"][i]))
    completion = _truncate(repr(kwargs["completions"][i]))
    return f"  sample {i} prompt: {prompt}\n  sample {i} completion: {completion}"


def _truncate(text: str, limit: int = 200) -> str:
    """Cut ``text`` to ``limit`` characters, marking the cut.

    >>> _truncate("abcdefgh", limit=6)
    'abc...'
    """
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------- metrics


def reward_metrics(batch: RewardBatch) -> dict[str, float]:
    """Mean and std of each function's rewards (ignoring None) and of the total.

    Std is the sample std (Bessel-corrected, like ``torch.std`` and TRL's logs), so
    it is nan with fewer than 2 values; a function that returned only None logs nan.
    With ``batch.errors`` each function also logs ``reward/<name>/errors``.

    >>> b = RewardBatch(per_func=torch.tensor([[1.0], [3.0], [float("nan")]]),
    ...                 total=torch.tensor([1.0, 3.0, 0.0]), names=["acc"])
    >>> {k: round(v, 4) for k, v in reward_metrics(b).items()}
    {'reward/acc/mean': 2.0, 'reward/acc/std': 1.4142, 'reward/mean': 1.3333, 'reward/std': 1.5275}
    """
    metrics = {}
    for j, name in enumerate(batch.names):
        column = batch.per_func[:, j]
        column = column[~torch.isnan(column)]
        metrics[f"reward/{name}/mean"] = _stat(column, torch.mean)
        metrics[f"reward/{name}/std"] = _stat(column, torch.std)
        if batch.errors is not None:
            metrics[f"reward/{name}/errors"] = float(batch.errors.get(name, 0))
    metrics["reward/mean"] = _stat(batch.total, torch.mean)
    metrics["reward/std"] = _stat(batch.total, torch.std)
    return metrics


def _stat(values: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> float:
    """``fn(values)`` as a float; nan when there are too few values."""
    if values.numel() == 0 or (fn is torch.std and values.numel() < 2):
        return math.nan
    return float(fn(values.double()))
