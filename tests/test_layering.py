"""Layering: no module imports an underscore (private) name from another subpackage of r1lab.

A subpackage is the first component under `r1lab` (`r1lab.rollout`, `r1lab.train`, ...; a
top-level module such as `r1lab.onednn` is its own). Inside one subpackage private names are
shared freely; across subpackages only public names are imported, so that speed code of one
layer never reaches into the internals of a sibling (STYLE.md, "Seams").
"""

from __future__ import annotations

import ast
from pathlib import Path

import r1lab

ROOT = Path(r1lab.__file__).parent


def _subpackage(module: str) -> str:
    """'r1lab.rollout.native' -> 'rollout'; 'r1lab.onednn' -> 'onednn'; 'r1lab' -> ''."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _private(name: str) -> bool:
    """An underscore name that is not a dunder (`__all__`, `__version__` are public)."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute module of `from <level dots><target> import ...` inside `module`."""
    if level == 0:
        return target or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def private_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    """The cross-subpackage private imports of one module's source, as 'line: what'.

    >>> private_imports("from r1lab.rollout.native import _cat, ok", "r1lab.train.packed")
    ['1: from r1lab.rollout.native import _cat']
    >>> private_imports("from r1lab.rollout import _x", "r1lab.rollout.hf")  # same subpackage
    []
    >>> private_imports("import r1lab.rewards._runner as r", "r1lab.serve.app")
    ['1: import r1lab.rewards._runner']
    >>> private_imports("from ..rollout.native import _rms", "r1lab.train.packed")
    ['1: from r1lab.rollout.native import _rms']
    """
    found = []
    own = _subpackage(module)
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            target = _resolve(module, is_package, node.level, node.module)
            if not target.startswith("r1lab") or _subpackage(target) in ("", own):
                continue
            hidden = [a.name for a in node.names if _private(a.name)]
            if any(_private(p) for p in target.split(".")):
                hidden = [a.name for a in node.names]
            if hidden:
                found.append(f"{node.lineno}: from {target} import {', '.join(hidden)}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if (parts[0] == "r1lab" and _subpackage(alias.name) not in ("", own)
                        and any(_private(p) for p in parts)):
                    found.append(f"{node.lineno}: import {alias.name}")
    return found


def test_no_module_imports_a_private_name_from_another_subpackage():
    bad = []
    files = sorted(ROOT.rglob("*.py"))
    assert len(files) > 30  # the scan saw the package
    for path in files:
        hits = private_imports(path.read_text(), _module_name(path), path.name == "__init__.py")
        bad += [f"{path.relative_to(ROOT.parent)}:{h}" for h in hits]
    assert not bad, "private names imported across subpackages:\n" + "\n".join(bad)


def test_the_scan_catches_each_form():
    """Each way of importing a private name across subpackages is caught; public ones are not."""
    m = "r1lab.train.packed"
    assert private_imports("from r1lab.rollout.native import _cat as c", m)
    assert private_imports("from r1lab.rollout._impl import thing", m)  # a private module
    assert private_imports("import r1lab.rollout._impl", m)
    assert private_imports("from .. import rollout\nfrom ..rollout import _x", m)
    assert private_imports("from r1lab.onednn import _weight_grad", m)  # top-level module
    assert not private_imports("from r1lab.rollout.native import NativeDecoder", m)
    assert not private_imports("from r1lab.train.common import _jsonable", m)  # own subpackage
    assert not private_imports("from .common import _jsonable", m)
    assert not private_imports("from r1lab.onednn import linear", m)
    assert not private_imports("from r1lab.rollout import __all__", m)
