"""The base of every config section, and how validation problems are reported: every problem
at once, each with its dotted key, the nearest valid name and, for a YAML file, where it was set."""

from __future__ import annotations

import difflib
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from grpokit.errors import ConfigError


_validating = ContextVar("grpokit_config_validating", default=False)  # inside an outer validation


@contextmanager
def _outer_validation():
    token = _validating.set(True)
    try:
        yield
    finally:
        _validating.reset(token)


class Section(BaseModel):
    """Base for every config section: unknown keys are errors (all of them reported, each with
    the nearest valid name), and an empty YAML section means "all defaults"."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)

    def __init__(self, /, **data: Any):
        """``GRPOConfig(num_generation=4)`` raises a ConfigError listing every problem, each with
        the nearest valid key (a section built inside another one lets the outer one report)."""
        if _validating.get():
            super().__init__(**data)
            return
        with _outer_validation():
            try:
                super().__init__(**data)
            except ValidationError as error:
                raise ConfigError(f"{type(self).__name__}: " + "; ".join(problems(error, type(self)))) from None

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any):
        """pydantic's, reporting every problem as a ``ValidationError`` (no custom wrapping)."""
        with _outer_validation():
            return super().model_validate(obj, **kwargs)

    @classmethod
    def model_validate_json(cls, json_data: Any, **kwargs: Any):
        with _outer_validation():
            return super().model_validate_json(json_data, **kwargs)

    @model_validator(mode="before")
    @classmethod
    def _empty_sections_are_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):  # ``grpo:`` with nothing under it is None in YAML
            data = {k: ({} if v is None and _is_required_section(cls, k) else v) for k, v in data.items()}
        return data

    @model_validator(mode="before")
    @classmethod
    def _yaml_off_is_a_choice(cls, data: Any) -> Any:
        """YAML reads a bare ``off`` as false: a field whose choices include 'off' takes it as 'off'
        (``dynamic_sampling: off``, ``action: off``)."""
        if isinstance(data, dict):
            data = {k: ("off" if v is False and _offers_off(cls, k) else v) for k, v in data.items()}
        return data


def _offers_off(model: type[BaseModel], key: str) -> bool:
    field = model.model_fields.get(key) if isinstance(key, str) else None
    return field is not None and "off" in get_args(field.annotation)


def _is_required_section(model: type[BaseModel], key: str) -> bool:
    """A section field that cannot be None (an optional one, such as ``sample.judge``, stays None)."""
    field = model.model_fields.get(key)
    return _section_of(model, key) is not None and (field.default_factory is not None or field.default is not None)


def _section_of(model: type[BaseModel], key) -> type[Section] | None:
    """The Section class of ``model``'s field ``key`` (also for a list of sections), or None."""
    field = model.model_fields.get(key) if isinstance(key, str) else None
    if field is None:
        return None
    annotation = field.annotation
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, Section):
            return candidate
    return None


Location = tuple  # a key path into the config tree: section names and list indices


def validate(model: type[BaseModel], tree: dict, source: str,
             set_by: dict[Location, str] | None = None) -> Any:
    """Build ``model`` from ``tree``; validation errors become one ConfigError with a line per
    problem. ``set_by`` maps the key paths that command-line overrides set to those overrides,
    so a problem under one names the override instead of ``source``."""
    try:
        return model.model_validate(tree)
    except ValidationError as error:
        lines = problems(error, model, set_by or {}, source)
        header, prefix = (source, f"{source}: ") if all(
            line.startswith(f"{source}: ") for line in lines) else ("config", "")
        body = [line.removeprefix(prefix) for line in lines]
        if len(body) == 1:
            raise ConfigError(body[0] if header == "config" else f"{header}: {body[0]}") from None
        raise ConfigError(f"{header}: {len(body)} problems:\n  " + "\n  ".join(body)) from None


def problems(error: ValidationError, model: type[BaseModel], set_by: dict[Location, str] | None = None,
             source: str | None = None) -> list[str]:
    """One line per problem, ``[source: ]key.path: message (got value)``; an unknown key gets
    the nearest valid name of its section.

    >>> from grpokit.config import RunConfig
    >>> try:
    ...     RunConfig.model_validate({"grpo": {"num_generation": 4, "beta": -1}})
    ... except ValidationError as error:
    ...     for line in problems(error, RunConfig):
    ...         print(line)
    grpo.beta: Input should be greater than or equal to 0 (got -1)
    grpo.num_generation: unknown key; did you mean 'num_generations'?
    """
    lines = []
    for item in error.errors():
        location = tuple(item["loc"])
        key = _dotted(location)
        if item["type"] == "extra_forbidden":
            section = _model_at(model, location[:-1])
            valid = list(section.model_fields) if section is not None else []
            close = difflib.get_close_matches(str(location[-1]), valid, n=1, cutoff=0.5)
            message = (f"unknown key; did you mean {close[0]!r}?" if close
                       else f"unknown key; valid keys here: {', '.join(sorted(valid))}")
        else:
            hidden = isinstance(item["input"], dict) or model.model_config.get("hide_input_in_errors")
            got = "" if hidden else f" (got {item['input']!r})"
            message = item["msg"].removeprefix("Value error, ") + got
        origin = _origin(location, set_by or {}) or source
        lines.append(f"{origin}: {key}: {message}" if origin else f"{key}: {message}")
    return lines


def _dotted(location: Location) -> str:
    """``('pipeline', 'stages', 1, 'type')`` -> ``'pipeline.stages[1].type'``."""
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _model_at(model: type[BaseModel], location: Location) -> type[BaseModel] | None:
    """The section class at ``location`` (list indices skipped), or None past the sections."""
    for part in location:
        if isinstance(part, int):
            continue
        model = _section_of(model, part)
        if model is None:
            return None
    return model


def _origin(location: Location, set_by: dict[Location, str]) -> str | None:
    """The override that set ``location`` or a section holding it (the most specific one)."""
    covering = [path for path in set_by if location[: len(path)] == path or path[: len(location)] == location]
    return f"override {set_by[max(covering, key=len)]!r}" if covering else None
