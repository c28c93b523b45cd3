"""Rewards by name: ``@register_reward("name")``, and :func:`resolve_reward`, which turns what a
config or a caller names (a function, a registered name, ``package.module:function``, or a mapping
``{name: ..., **options}``) into a reward function with its options checked."""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import pkgutil
from typing import Any, Callable, Mapping, Sequence

from grpokit.errors import ConfigError
from grpokit.imports import import_object

__all__ = ["REWARD_REGISTRY", "RewardFunc", "register_reward", "resolve_reward", "reward_name", "reward_options"]

RewardFunc = Callable[..., Sequence[float | None]]

#: Registered reward functions by name; fill it with :func:`register_reward`.
REWARD_REGISTRY: dict[str, RewardFunc] = {}

_RESERVED_KWARGS = ("prompts", "completions", "completion_ids", "trainer_state")
_NAMED_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def reward_name(fn: Any) -> str:
    """The registered name of a built-in reward, else ``fn.__name__``, or the class name for
    callable objects; a partial's own ``__name__`` (an alias) when set, else its function's.

    >>> reward_name(len), reward_name(functools.partial(len))
    ('len', 'len')
    """
    if isinstance(fn, functools.partial):
        return getattr(fn, "__name__", None) or reward_name(fn.func)
    return getattr(fn, "registered_name", None) or getattr(fn, "__name__", None) or type(fn).__name__


def register_reward(name: str) -> Callable[[RewardFunc], RewardFunc]:
    """Decorator adding a reward function to :data:`REWARD_REGISTRY` under ``name``.

    Registering a different function under a taken name raises ``ValueError``.

    >>> @register_reward("doc_example_len")
    ... def doc_example_len(prompts, completions, **kwargs):
    ...     return [float(len(c)) for c in completions]
    >>> resolve_reward("doc_example_len") is doc_example_len
    True
    >>> del REWARD_REGISTRY["doc_example_len"]
    """
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"register_reward: name must be a non-empty string without ':', found {name!r}")

    def decorator(fn: RewardFunc) -> RewardFunc:
        existing = REWARD_REGISTRY.get(name)
        if existing is not None and existing is not fn:
            raise ValueError(
                f"register_reward: name '{name}' is already registered to "
                f"{_qualname(existing)}; cannot register {_qualname(fn)}"
            )
        REWARD_REGISTRY[name] = fn
        fn.registered_name = name  # metric keys use the name YAML users write
        return fn

    return decorator


def _qualname(fn: Any) -> str:
    """``module:qualname`` of a function, for error messages."""
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', reward_name(fn))}"


def resolve_reward(spec: RewardFunc | str | Mapping[str, Any], where: str = "reward") -> RewardFunc:
    """Turn a registered name, an import path ``"pkg.module:function"`` or a mapping into a callable.

    Callables are returned unchanged. On a registry miss, the modules of the
    ``grpokit.rewards`` package are imported once (so built-in rewards register
    themselves) before giving up. A mapping ``{"name": ..., **options}`` binds keyword
    options with ``functools.partial`` (see :func:`reward_options` for which are accepted);
    an optional ``alias`` names the reward in metrics, e.g. for two configurations of one function.
    ``where`` names the setting in errors (``"rewards[1]"``); every error is a
    :class:`~grpokit.errors.ConfigError` saying what to write instead.

    >>> resolve_reward("math:sqrt")(16.0)
    4.0
    >>> hyp = resolve_reward({"name": "math:hypot", "alias": "dist"})
    >>> reward_name(hyp), hyp(3, 4)
    ('dist', 5.0)
    """
    if callable(spec):
        return spec
    if isinstance(spec, Mapping):
        return _resolve_mapping(spec, where)
    if not isinstance(spec, str):
        raise ConfigError(f"{where}: expected a reward name, 'package.module:function' or a mapping with a "
                          f"'name' key, found {type(spec).__name__} ({spec!r})")
    if ":" in spec:
        return import_object(spec, where)
    if spec not in REWARD_REGISTRY:
        _import_builtin_rewards()
    if spec not in REWARD_REGISTRY:
        close = difflib.get_close_matches(spec, list(REWARD_REGISTRY), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(
            f"{where}: unknown reward {spec!r}; {hint}registered rewards: {', '.join(sorted(REWARD_REGISTRY))}. "
            f"A function of your own is named by its import path, 'package.module:function' (a module "
            f"in the working directory works: 'myrewards:my_reward')"
        )
    return REWARD_REGISTRY[spec]


def _resolve_mapping(spec: Mapping[str, Any], where: str) -> RewardFunc:
    """``{"name": ..., "alias": ..., **options}`` -> the named reward with ``options`` bound."""
    options = dict(spec)
    name = options.pop("name", None)
    if not isinstance(name, str) or not name:
        found = ", ".join(map(str, spec)) or "none"
        raise ConfigError(f"{where}: a reward mapping needs a 'name' key holding a registered name or "
                          f"'package.module:function' (found keys: {found}), e.g. "
                          f"{{name: soft_overlong, max_length: 512, cache_length: 128}}")
    alias = options.pop("alias", None)
    if alias is not None and (not isinstance(alias, str) or not alias):
        raise ConfigError(f"{where}: reward '{name}' has alias {alias!r}; expected a non-empty string")
    fn = resolve_reward(name, where)
    _check_options(fn, name, options, where)
    if not options and alias is None:
        return fn
    bound = functools.partial(fn, **options)
    if alias is not None:
        bound.__name__ = alias
    return bound


def reward_options(fn: Any) -> list[str] | None:
    """Keyword options a config mapping may bind to ``fn``; None when its signature is unknown.

    They are its named parameters other than TRL's inputs (``prompts``, ``completions``,
    ``completion_ids``, ``trainer_state``), plus the names in ``fn.reward_options`` for a
    function that takes its options through ``**kwargs``.

    >>> def clipped(prompts, completions, completion_ids, *, low=0.0, high=1.0, **kwargs): ...
    >>> reward_options(clipped)
    ['low', 'high']
    """
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # some builtins have no signature
        return None
    named = [p.name for p in parameters if p.kind in _NAMED_KINDS and p.name not in _RESERVED_KWARGS]
    return named + [k for k in getattr(fn, "reward_options", ()) if k not in named]


def _check_options(fn: RewardFunc, name: str, options: dict[str, Any], where: str) -> None:
    """Raise ConfigError naming the reward when ``options`` has unknown keys or lacks required ones."""
    accepted = reward_options(fn)
    if accepted is None:
        return
    listed = ", ".join(accepted) or "none"
    unknown = [k for k in options if k not in accepted]
    if unknown:
        close = [difflib.get_close_matches(k, accepted, n=1) for k in unknown]
        hints = "".join(f" ({k!r}: did you mean {c[0]!r}?)" for k, c in zip(unknown, close) if c)
        raise ConfigError(f"{where}: reward '{name}' got unknown option(s) {', '.join(map(repr, unknown))}"
                          f"{hints}; it accepts: {listed} (and 'alias' for the metric name)")
    required = [p.name for p in inspect.signature(fn).parameters.values()
                if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty]
    missing = [k for k in required if k not in options]
    if missing:
        example = ", ".join(f"{k}: ..." for k in missing)
        raise ConfigError(f"{where}: reward '{name}' needs option(s) {', '.join(map(repr, missing))}; write it "
                          f"as a mapping, {{name: {name}, {example}}} (it accepts: {listed})")


@functools.cache
def _import_builtin_rewards() -> None:
    """Import every submodule of ``grpokit.rewards`` once, so their decorators run."""
    package = importlib.import_module("grpokit.rewards")
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"grpokit.rewards.{info.name}")
