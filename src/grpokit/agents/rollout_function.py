"""TRL's ``rollout_func=``: the user's own generation loop.

``rollout_func(prompts, trainer)`` receives this process's prompts, each repeated
``num_generations`` times in a row (TRL's order), and the trainer (``trainer.model``,
``trainer.processing_class``, ``trainer.args``), and returns a dict with one list per completion:
``prompt_ids``, ``completion_ids`` and ``logprobs`` (the sampler's log-prob of every completion
token); optionally ``env_mask`` (1 on tokens the model sampled, 0 on tokens an environment
inserted, which are context and not trained on). Every other key is passed to the reward
functions as a keyword: a list holds one value per completion, any other value is given to
every completion.
A completion that does not end in EOS (or padding) counts as truncated.

>>> output = {"prompt_ids": [[5, 6], [5, 6]], "completion_ids": [[7, 1], [8, 9]],
...           "logprobs": [[-0.1, -0.2], [-0.3, -0.4]], "turns": [1, 2]}
>>> rollout, extra = rollout_from_output(output, group_size=2, eos_token_id=1, pad_token_id=0)
>>> rollout.completion_ids.tolist(), rollout.truncated.tolist(), extra
([[7, 1], [8, 9]], [False, True], {'turns': [1, 2]})
"""

from __future__ import annotations

from grpokit.agents.episodes import rollout_from_lists
from grpokit.errors import ConfigError
from grpokit.sampling.sampler import Rollout

REQUIRED = ("prompt_ids", "completion_ids", "logprobs")


def rollout_from_output(output, group_size: int, eos_token_id: int, pad_token_id: int,
                        expected: int | None = None) -> tuple[Rollout, dict]:
    """The rollout of ``rollout_func``'s output, and its extra fields for the reward functions.

    Raises:
        ConfigError: naming the key and the completion, when the output does not fit the contract.
    """
    if not isinstance(output, dict):
        raise ConfigError(f"rollout_func returned {type(output).__name__}; expected a dict with the keys "
                          f"{', '.join(REQUIRED)} (one list per completion)")
    missing = [key for key in REQUIRED if key not in output]
    if missing:
        raise ConfigError(f"rollout_func must return keys {missing} in its output dict (it returned "
                          f"{sorted(output)})")
    count = len(output["completion_ids"])
    if expected is not None and count != expected:
        raise ConfigError(f"rollout_func returned {count} completions for {expected} prompts; return one per "
                          "prompt it was given (each prompt comes num_generations times)")
    if count % group_size:
        raise ConfigError(f"rollout_func returned {count} completions, not a multiple of num_generations "
                          f"({group_size})")
    masks = output.get("env_mask")
    for key in (*REQUIRED, *(["env_mask"] if masks is not None else [])):
        if len(output[key]) != count:
            raise ConfigError(f"rollout_func: '{key}' has {len(output[key])} entries but there are {count} "
                              "completions; give one per completion")
    for i, ids in enumerate(output["completion_ids"]):
        for key in ("logprobs", "env_mask"):
            if key in output and output[key] is not None and len(output[key][i]) != len(ids):
                raise ConfigError(f"rollout_func: completion {i} has {len(ids)} tokens but '{key}' has "
                                  f"{len(output[key][i])} values; give one per completion token")
    ids = [list(map(int, row)) for row in output["completion_ids"]]
    truncated = [not row or row[-1] not in (eos_token_id, pad_token_id) for row in ids]
    rollout = rollout_from_lists([list(map(int, row)) for row in output["prompt_ids"]], ids,
                                 [list(map(float, row)) for row in output["logprobs"]],
                                 [list(map(int, row)) for row in masks] if masks is not None else None,
                                 truncated, group_size, pad_token_id)
    extra = {key: value if isinstance(value, list) and len(value) == count else [value] * count
             for key, value in output.items() if key not in (*REQUIRED, "env_mask", "logprob_token_ids")}
    return rollout, extra
