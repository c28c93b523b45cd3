"""Length rewards measured in completion tokens (``completion_ids``).

``soft_overlong`` is DAPO's soft overlong punishment (DAPO Eq. 13), meant to be
added to a correctness reward; ``length_penalty`` is a plain linear penalty past a target
length. In a YAML config, with ``grpo.max_completion_length: 512``::

    rewards:
      - math
      - {name: soft_overlong, max_length: 512, cache_length: 128}

>>> soft_overlong_reward(["q"] * 3, ["a", "b", "c"], completion_ids=[[1] * 384, [1] * 448, [1] * 600],
...                      max_length=512, cache_length=128)
[0.0, -0.5, -1.0]
"""

from __future__ import annotations

from grpokit.rewards.lookup import register_reward

__all__ = ["length_penalty", "length_penalty_reward", "soft_overlong_penalty", "soft_overlong_reward"]


def soft_overlong_penalty(length: int, max_length: int, cache_length: int) -> float:
    """DAPO Eq. 13: 0 up to ``L_max - L_cache`` tokens, then falling linearly to -1 at ``L_max``.

    R = 0 for |y| <= L_max - L_cache; R = ((L_max - L_cache) - |y|) / L_cache up to L_max;
    R = -1 past L_max. With L_max = 20 and L_cache = 4 the punishment starts after 16 tokens:

    >>> [soft_overlong_penalty(n, max_length=20, cache_length=4) for n in (10, 16, 17, 19, 20, 21)]
    [0.0, 0.0, -0.25, -0.75, -1.0, -1.0]
    """
    if cache_length < 1 or max_length <= cache_length:
        raise ValueError(f"soft_overlong: need 1 <= cache_length < max_length, found max_length={max_length}, "
                         f"cache_length={cache_length} (DAPO: max_length 20480, cache_length 4096)")
    expected = max_length - cache_length
    if length <= expected:
        return 0.0
    if length <= max_length:
        return (expected - length) / cache_length
    return -1.0


def length_penalty(length: int, target_length: int, max_length: int) -> float:
    """0 up to ``target_length`` tokens, then falling linearly to -1 at ``max_length`` and beyond.

    >>> [length_penalty(n, target_length=100, max_length=300) for n in (50, 100, 150, 300, 400)]
    [0.0, 0.0, -0.25, -1.0, -1.0]
    """
    if target_length < 0 or max_length <= target_length:
        raise ValueError(f"length_penalty: need 0 <= target_length < max_length, found "
                         f"target_length={target_length}, max_length={max_length}")
    if length <= target_length:
        return 0.0
    return -min(1.0, (length - target_length) / (max_length - target_length))


@register_reward("soft_overlong")
def soft_overlong_reward(prompts, completions, completion_ids, *, max_length: int, cache_length: int,
                         **kwargs) -> list[float]:
    """:func:`soft_overlong_penalty` of each completion's token count.

    ``max_length`` is L_max (usually ``grpo.max_completion_length``) and ``cache_length`` is
    L_cache, the span before L_max over which the punishment grows.
    """
    return [soft_overlong_penalty(len(ids), max_length, cache_length) for ids in completion_ids]


@register_reward("length_penalty")
def length_penalty_reward(prompts, completions, completion_ids, *, target_length: int, max_length: int,
                          **kwargs) -> list[float]:
    """:func:`length_penalty` of each completion's token count."""
    return [length_penalty(len(ids), target_length, max_length) for ids in completion_ids]
