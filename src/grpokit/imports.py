"""``package.module:function`` references in a config (rewards, process rewards, and any other
plug-in named by import path): imported with the working directory on the import path, as
``python -m`` has it, and with errors that say what to fix.

>>> import_object("math:sqrt", "reward")(16.0)
4.0
>>> import_object("math:sqrtt", "rewards[0]")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
grpokit.errors.ImportPathError: rewards[0] 'math:sqrtt': module 'math' (...) has no 'sqrtt'; did you mean 'sqrt'?
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
import traceback
from typing import Any

from grpokit.errors import ImportPathError


def import_object(spec: str, what: str) -> Any:
    """The callable that ``spec`` (``"package.module:name"``, ``name`` may be dotted) names.

    ``what`` names the setting in errors (``"rewards[1]"``, ``"grpo.process_reward"``).
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ImportPathError(f"{what} {spec!r} is not of the form 'package.module:function'")
    _working_directory_on_path()
    module = _import_module(module_name, spec, what)
    obj: Any = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise ImportPathError(f"{what} {spec!r}: {_describe(obj)} has no {part!r}; {_suggest(obj, part)}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ImportPathError(f"{what} {spec!r}: {attribute!r} is a {type(obj).__name__}, not a function")
    return obj


def _working_directory_on_path() -> None:
    """Put the working directory first on ``sys.path`` (the ``grpokit`` script, unlike
    ``python -m``, starts with its own directory there instead)."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def _import_module(name: str, spec: str, what: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name and (name == error.name or name.startswith(error.name + ".")):
            raise ImportPathError(
                f"{what} {spec!r}: no module named {error.name!r}. grpokit looks in the working directory "
                f"({os.getcwd()}) and the installed packages: run grpokit from the directory that holds "
                f"{error.name.replace('.', '/')}.py, or install its package (pip install -e .)") from error
        raise ImportPathError(f"{what} {spec!r}: importing {name!r} failed because it imports {error.name!r}, "
                              f"which is not installed{user_frame(error)}") from error
    except Exception as error:  # the module itself raised while importing
        raise ImportPathError(f"{what} {spec!r}: importing {name!r} raised {type(error).__name__}: "
                              f"{error}{user_frame(error)}") from error


def _describe(obj: Any) -> str:
    where = getattr(obj, "__file__", None)
    return f"module {obj.__name__!r}" + (f" ({where})" if where else "") if hasattr(obj, "__name__") else repr(obj)


def _suggest(obj: Any, name: str) -> str:
    """Did-you-mean for a missing attribute, else what the object defines."""
    names = [n for n in dir(obj) if not n.startswith("_")]
    close = difflib.get_close_matches(name, names, n=1)
    if close:
        return f"did you mean {close[0]!r}?"
    functions = [n for n in names if callable(getattr(obj, n, None))][:12]
    return f"it defines: {', '.join(functions) or 'no public functions'}"


def user_frame(error: BaseException) -> str:
    """``" (at file.py:12 in fn)"`` for the innermost frame of ``error``'s traceback that is not
    grpokit's or the import machinery's; "" when there is none.

    >>> try:
    ...     int("x")
    ... except ValueError as error:
    ...     user_frame(error).startswith(" (at ")
    True
    """
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if "importlib" not in f.filename and f"{os.sep}grpokit{os.sep}" not in f.filename]
    if not frames:
        return ""
    frame = frames[-1]  # its line; named by the function around a comprehension or lambda
    named = [f.name for f in frames if f.filename == frame.filename and not f.name.startswith("<")]
    return f" (at {frame.filename}:{frame.lineno} in {named[-1] if named else frame.name})"
