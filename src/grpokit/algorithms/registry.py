"""Named plug-ins: one ``Registry`` per kind (advantage estimators, policy losses, loss
aggregations), each filled by a decorator and read by name from a config.

A config value is either a registered name or ``"package.module:function"``, which is imported
(with the working directory on the import path) and used as is, so a user's own variant works
from YAML without registering it first.

>>> COLOURS = Registry("colour", "colour")
>>> @COLOURS.register("red")
... def red():
...     return "#f00"
>>> COLOURS.get("red")(), COLOURS.names()
('#f00', ['red'])
>>> COLOURS.get("rde")
Traceback (most recent call last):
...
grpokit.errors.ConfigError: unknown colour 'rde'; did you mean 'red'? Valid: 'red', or 'package.module:function'
"""

from __future__ import annotations

import difflib
from typing import Callable, TypeVar

from grpokit.errors import ConfigError
from grpokit.imports import import_object

F = TypeVar("F", bound=Callable)


class Registry:
    """Functions of one kind by name; ``key`` is the config key that names them (for errors)."""

    def __init__(self, kind: str, key: str):
        self.kind, self.key = kind, key
        self._functions: dict[str, Callable] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator adding a function under ``name``; a second function with the same name raises."""
        if ":" in name:
            raise ValueError(f"{self.kind} name {name!r} may not contain ':' (that marks an import path)")

        def decorator(fn: F) -> F:
            if name in self._functions:
                raise ValueError(f"{self.kind} {name!r} is already registered "
                                 f"(by {self._functions[name].__module__}); pick another name")
            self._functions[name] = fn
            return fn

        return decorator

    def names(self) -> list[str]:
        return sorted(self._functions)

    def __contains__(self, name: str) -> bool:
        return name in self._functions

    def check(self, name: str) -> str:
        """``name`` if it is registered or looks like an import path; else a ConfigError that lists
        the valid names. Import paths are imported later, by :meth:`get`."""
        if name in self._functions or ":" in name:
            return name
        close = difflib.get_close_matches(name, self.names(), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        valid = ", ".join(repr(n) for n in self.names())
        raise ConfigError(f"unknown {self.kind} {name!r}; {hint}Valid: {valid}, or 'package.module:function'")

    def get(self, name: str) -> Callable:
        """The function registered as ``name``, or the one ``"package.module:function"`` names."""
        if ":" in self.check(name):
            return import_object(name, self.key)
        return self._functions[name]
