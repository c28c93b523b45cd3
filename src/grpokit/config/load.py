"""YAML in, validated ``RunConfig`` out: dotted ``key=value`` overrides, the resolved config
written beside a run, and the generated config reference (``python -m grpokit.config``)."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel

from grpokit.errors import ConfigError
from grpokit.config.run import RunConfig
from grpokit.config.sections import Location, Section, validate


def apply_override(tree: dict, dotted: str) -> Location:
    """Apply ``"a.b=value"`` to a nested dict; the value is parsed as YAML. In a list of named
    entries (pipeline stages) a key picks the entry with that ``name``. Returns the key path it
    set (list entries by index), so errors under it can name the override.

    >>> tree = {"grpo": {"beta": 0.0}, "stages": [{"name": "rm", "overrides": {}}]}
    >>> apply_override(tree, "grpo.beta=0.04"), tree["grpo"]
    (('grpo', 'beta'), {'beta': 0.04})
    >>> apply_override(tree, "stages.rm.overrides.rm.max_steps=5"); tree["stages"]
    ('stages', 0, 'overrides', 'rm', 'max_steps')
    [{'name': 'rm', 'overrides': {'rm': {'max_steps': 5}}}]
    """
    if "=" not in dotted:
        raise ConfigError(f"override {dotted!r} is not of the form key.path=value")
    path, raw = dotted.split("=", 1)
    *parents, leaf = path.strip().split(".")
    node, location = tree, []
    for key in parents:
        node, step = _child(node, key, dotted)
        location.append(step)
    if isinstance(node, list):
        raise ConfigError(f"override {dotted!r}: {'.'.join(parents)!r} is a list; a value goes in one of its "
                          f"entries, named by the entry's name (e.g. pipeline.stages.sft.overrides...)")
    try:
        node[leaf] = yaml.safe_load(raw)
    except (yaml.YAMLError, ValueError) as error:  # ValueError: an integer past 4,300 digits
        raise ConfigError(f"override {dotted!r}: the value is not valid YAML ({error})") from None
    return (*location, leaf)


def _child(node: dict | list, key: str, dotted: str) -> tuple[dict, str | int]:
    """The section ``key`` of ``node`` (created when absent), or the list entry named ``key``,
    and how a key path names it (the key, or the entry's index)."""
    if isinstance(node, list):
        named = [i for i, entry in enumerate(node) if isinstance(entry, dict) and entry.get("name") == key]
        if not named:
            names = [entry.get("name") for entry in node if isinstance(entry, dict)]
            raise ConfigError(f"override {dotted!r}: no entry named {key!r} (entries: {names})")
        return node[named[0]], named[0]
    if node.get(key) is None:  # absent, or an empty YAML section
        node[key] = {}
    if not isinstance(node[key], (dict, list)):
        raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
    return node[key], key


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML run config (or defaults when ``path`` is None) and apply overrides; every
    problem is reported at once, each naming the file or the override it comes from."""
    source = str(path) if path else "defaults"
    tree: dict = {}
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {source!r} does not exist")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except (yaml.YAMLError, ValueError) as error:  # ValueError: an integer past 4,300 digits
            raise ConfigError(f"config file {source!r} is not valid YAML: {error}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {source!r}: expected a mapping at the top level")
    set_by = {apply_override(tree, dotted): dotted for dotted in overrides}
    return validate(RunConfig, tree, source, set_by)


def write_resolved(config: BaseModel, output_dir: str | Path, name: str = "config.yaml") -> Path:
    """Write the resolved config as YAML to ``output_dir/name``.

    Trainers write their own section as ``config.yaml``; the CLI stages also write the whole
    run tree (model, data, rewards, every section) as ``run_config.yaml``.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / name
    target.write_text(yaml.safe_dump(config.model_dump(), sort_keys=False))
    return target


def reference_markdown(model: type[Section] = RunConfig, prefix: str = "",
                       seen: dict[type, str] | None = None) -> str:
    """A markdown table of every key, its default and its meaning (docs/config.md).

    A nested section shared by several stages (``monitor``) is listed in full once; later
    occurrences get one row pointing at the first.
    """
    seen = {} if seen is None else seen
    rows = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, Section):
            if annotation in seen:
                rows.append(f"| `{prefix}{name}` | | The same keys as `{seen[annotation]}.*`. |")
                continue
            seen[annotation] = f"{prefix}{name}"
            rows.append(reference_markdown(annotation, f"{prefix}{name}.", seen))
            continue
        default = field.get_default(call_default_factory=True)
        doc = " ".join((field.description or "").split())
        rows.append(f"| `{prefix}{name}` | `{default!r}` | {doc} |")
    return "\n".join(rows)
