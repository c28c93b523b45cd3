"""The package layout is the data flow: each package imports only packages below it, module names
are unique, modules stay short, and docstrings cite only files that are in the repository."""

from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "grpokit"

#: Bottom to top. A unit (top-level module or package of grpokit) may import only units on its
#: own line or below; units on one line do not import each other.
LAYERS = [
    ["errors"],
    ["imports", "answers", "progress"],
    ["algorithms"],
    ["data"],
    ["config"],
    ["parallel"],
    ["models"],
    ["serving"],
    ["sampling"],
    ["agents"],
    ["tasks"],
    ["rewards"],
    ["evaluation"],
    ["monitoring"],
    ["trainers"],
    ["recipes"],
    ["cli"],
    ["__main__"],
]
LEVEL = {unit: level for level, units in enumerate(LAYERS) for unit in units}
MAX_MODULE_LINES = 420


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def unit_of(dotted: str) -> str:
    """``grpokit.rewards.judge`` -> ``rewards``."""
    return dotted.split(".")[1]


def grpokit_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every ``grpokit.*`` import in the file, at any depth (function-level too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [(node.lineno, name) for name in names if name.startswith("grpokit.")]
    return found


def test_every_unit_of_the_package_has_a_layer():
    units = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in modules()} - {"__init__"}
    assert units - set(LEVEL) == set(), "add the new package or module to LAYERS"


def test_no_package_imports_one_above_it():
    upward = []
    for path in modules():
        rel = path.relative_to(PACKAGE)
        if rel.parts == ("__init__.py",):
            continue  # the public API re-exports from everywhere
        own = rel.parts[0].removesuffix(".py")
        for line, name in grpokit_imports(path):
            other = unit_of(name)
            if other != own and LEVEL[other] >= LEVEL[own]:
                upward.append(f"src/grpokit/{rel}:{line} ({own}) imports {name} ({other})")
    assert upward == [], "imports against the data flow:\n" + "\n".join(upward)


def test_module_names_are_unique_across_packages():
    names = Counter(p.name for p in modules() if p.name not in ("__init__.py", "__main__.py"))
    assert [name for name, count in names.items() if count > 1] == []


def test_modules_are_short():
    long = {str(p.relative_to(PACKAGE)): n for p in modules() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}


def test_docstrings_cite_only_files_in_the_repository():
    cited = re.compile(r"(?<![\w/.])((?:[\w.-]+/)*[\w-]+\.md)\b")
    missing = []
    for path in modules():
        for name in cited.findall(path.read_text()):
            if not any(candidate.exists() for candidate in
                       (ROOT / name, ROOT / "docs" / name, path.parent / name, PACKAGE / name)):
                missing.append(f"{path.relative_to(ROOT)} cites {name}")
    assert missing == []


def test_an_installed_wheel_would_hold_every_module_and_data_file():
    """setuptools packs only directories with an ``__init__.py`` and the data files that
    ``tool.setuptools.package-data`` names (``pip install .``, unlike ``-e``, reads nothing else)."""
    section = (ROOT / "pyproject.toml").read_text().split("[tool.setuptools.package-data]")[1]
    patterns = re.findall(r'"([^"]+)"', re.search(r"^grpokit = \[(.*?)\]", section, re.M).group(1))
    packaged = {path for pattern in patterns for path in PACKAGE.glob(pattern)}
    files = [p for p in PACKAGE.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert [str(p.relative_to(PACKAGE)) for p in files if p.suffix != ".py" and p not in packaged] == []
    assert [str(d.relative_to(PACKAGE)) for d in {p.parent for p in files if p.suffix == ".py"}
            if not (d / "__init__.py").exists()] == []
