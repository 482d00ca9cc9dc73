"""Imports run one way, down the layers of docs/architecture.md: a module never imports one of
a higher layer. Read from the source (every import, those inside functions included), so an
import that only runs on some path cannot slip through."""

from __future__ import annotations

import ast
from pathlib import Path

import scanside

PACKAGE = Path(scanside.__file__).parent
# Lowest first. Modules of one layer may import each other.
LAYERS = [
    {"scanside", "scanside.errors", "scanside.files", "scanside.store"},
    {"scanside.runtime"},
    {"scanside.batch"},
    {"scanside.dicom"},
    {"scanside.export"},
    {"scanside.node", "scanside.cluster", "scanside.cluster_auth", "scanside.bench",
     "scanside.training", "scanside.demo"},
    {"scanside.cli", "scanside.__main__"},
]


def unit(module: str) -> str:
    """The layer entry a module belongs to: its package under scanside, or itself."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def layer(module: str) -> int:
    name = unit(module)
    for number, members in enumerate(LAYERS):
        if name in members:
            return number
    raise AssertionError(f"{module}: in no layer; add it to LAYERS and docs/architecture.md")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    """Whether the dotted ``name`` is a module or package of the source tree."""
    parts = name.split(".")
    if parts[0] != "scanside":
        return False
    path = PACKAGE.joinpath(*parts[1:])
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(path: Path) -> set[str]:
    """scanside modules ``path`` imports, relative imports resolved."""
    own = module_name(path).split(".")
    package = own if path.name == "__init__.py" else own[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found.add(target)
            # from scanside import dicom, from . import x: a name may be a module
            found |= {f"{target}.{a.name}" for a in node.names if is_module(f"{target}.{a.name}")}
    return {name for name in found if name.split(".")[0] == "scanside"}


def test_imports_run_down_the_layers():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parts[-2] == "models":  # the renamed package's stub that names scanside.training
            continue
        here = module_name(path)
        if here == "scanside":
            continue  # the package's front door re-exports Pipeline and Sampling
        for target in imports(path):
            if unit(target) == "scanside":
                continue  # the top-level package: its version, Pipeline
            if layer(target) > layer(here):
                upward.append(f"{here} imports {target}")
    assert not upward, upward


def test_the_checker_sees_an_upward_import(tmp_path):
    """The check above would pass on a checker that finds nothing: show it finds one,
    absolute or relative, at the top of a module or inside a function."""
    fake = tmp_path / "scanside"
    (fake / "runtime").mkdir(parents=True)
    bad = fake / "runtime" / "bad.py"
    bad.write_text("from scanside.dicom import Window\nfrom scanside import export\n"
                   "def f():\n    from ..cli import options\n    from . import images\n")
    for module in ("dicom", "cli", "export"):
        (fake / module).mkdir()
        (fake / module / "__init__.py").write_text("")
    (fake / "cli" / "options.py").write_text("")
    (fake / "runtime" / "images.py").write_text("")
    globals()["PACKAGE"] = fake
    try:
        found = imports(bad)
    finally:
        globals()["PACKAGE"] = Path(scanside.__file__).parent
    assert {"scanside.dicom", "scanside.export", "scanside.cli.options",
            "scanside.runtime.images"} <= found
    assert layer("scanside.dicom") > layer("scanside.runtime.bad")
    assert layer("scanside.cli") > layer("scanside.runtime.bad")
