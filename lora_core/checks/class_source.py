"""What a name in an installed module is, read from the module's source with ``ast``.

The optimizer check asks this about an optimizer named by its import path
(``optimizer_type = "torch.optim.RAdam"``) and about the listed optimizers: is it a class,
what does its ``__init__`` take, does it derive from ``torch.optim.Optimizer``. Nothing is
imported (the wizard runs this check as answers are typed, and importing the class would
import torch): modules are found with ``importlib.util.find_spec`` on the top-level package
only, and followed through ``from x import y`` by file.

A source read can be sure a name is missing, or is a module or a function, only when the
module binds names plainly; a star import, a module ``__getattr__`` or ``globals()`` /
``setattr`` / ``exec`` make the answer :data:`UNKNOWN`, and so does anything not found as a
``.py`` file (a compiled module). The run imports the class before any model loads
(``session.run_checks``), so what cannot be told here is still told before training.
"""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

_MAX_DEPTH = 8
_DYNAMIC_CALLS = frozenset({"globals", "setattr", "exec", "vars", "__import__"})
_OPTIMIZER_BASE = ("torch.optim.optimizer", "Optimizer")


@dataclass(frozen=True)
class Found:
    """What ``module.name`` is. ``kind``: "class", "module", "function", "nothing" (sure it
    is not there), "unknown" (the source cannot tell), "uninstalled" (the top-level package
    is not installed)."""

    kind: str
    module: str = ""
    node: ast.ClassDef | None = None  # for "class": its definition, in ``module``

    @property
    def certain(self) -> bool:
        return self.kind != "unknown"


UNKNOWN = Found("unknown")


def find_name(module: str, name: str) -> Found:
    """What ``module.name`` is, read from source."""
    return _find(module, name, 0)


def is_optimizer_class(found: Found) -> bool | None:
    """Whether a class found in source derives from ``torch.optim.Optimizer``; None when its
    bases cannot all be followed."""
    return _derives(found, 0)


def module_source(module: str) -> Path | None:
    """The ``.py`` file of ``module``, found without importing it or its parents."""
    top, _, rest = module.partition(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if not rest:
        return Path(spec.origin) if spec.origin and spec.origin.endswith(".py") else None
    for folder in spec.submodule_search_locations or ():
        path = Path(folder, *rest.split("."))
        for candidate in (path.with_suffix(".py"), path / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module.split(".")[0]) is not None
    except (ImportError, ValueError):
        return False


@lru_cache(maxsize=64)
def _parsed(module: str) -> ast.Module | None:
    source = module_source(module)
    if source is None:
        return None
    try:
        return ast.parse(source.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None


def _statements(body: list[ast.stmt]):
    """A module's statements, with those inside top-level if / try / with blocks (names
    bound there are bound at module level too); never inside functions or classes."""
    for stmt in body:
        yield stmt
        if isinstance(stmt, (ast.If, ast.With, ast.For, ast.While)):
            yield from _statements(stmt.body + stmt.orelse if hasattr(stmt, "orelse")
                                   else stmt.body)
        elif isinstance(stmt, ast.Try | ast.TryStar):
            yield from _statements(stmt.body + stmt.orelse + stmt.finalbody
                                   + [s for h in stmt.handlers for s in h.body])


def _dynamic(tree: ast.Module) -> bool:
    """Whether the module may bind names the source does not spell."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names):
            return True
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__" \
                and node in tree.body:
            return True
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in _DYNAMIC_CALLS:
            return True
    return False


def _package(module: str, tree_is_package: bool) -> str:
    return module if tree_is_package else module.rpartition(".")[0]


def _find(module: str, name: str, depth: int) -> Found:
    if depth > _MAX_DEPTH:
        return UNKNOWN
    tree = _parsed(module)
    if tree is None:
        return UNKNOWN if _installed(module) else Found("uninstalled", module)
    source = module_source(module)
    is_package = source is not None and source.name == "__init__.py"
    bound: ast.stmt | ast.alias | None = None  # the last statement binding ``name``
    origin: str | None = None  # for ``from origin import name``
    for stmt in _statements(tree.body):
        if isinstance(stmt, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            if stmt.name == name:
                bound, origin = stmt, None
        elif isinstance(stmt, ast.Import):
            for alias in stmt.names:
                if (alias.asname or alias.name.split(".")[0]) == name:
                    bound, origin = alias, None
        elif isinstance(stmt, ast.ImportFrom):
            for alias in stmt.names:
                if (alias.asname or alias.name) == name:
                    bound, origin = alias, _absolute(stmt, module, is_package)
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            if name in _assigned_names(targets):
                return UNKNOWN  # a value computed at import time
    if isinstance(bound, ast.ClassDef):
        return Found("class", module, bound)
    if isinstance(bound, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return Found("function", module)
    if isinstance(bound, ast.alias):
        if origin is None:
            return Found("module", module)
        if module_source(f"{origin}.{bound.name}") is not None:
            return Found("module", module)
        return _find(origin, bound.name, depth + 1)
    if _dynamic(tree) or module_source(f"{module}.{name}") is not None:
        return UNKNOWN  # a submodule is an attribute once anything imported it
    return Found("nothing", module)


def _assigned_names(targets: list[ast.expr]) -> set[str]:
    """The names an assignment binds (``x = ``, ``x, y = ``), not ``x.attr = `` ones."""
    names: set[str] = set()
    for target in targets:
        if isinstance(target, ast.Name):
            names.add(target.id)
        elif isinstance(target, (ast.Tuple, ast.List)):
            names |= _assigned_names(list(target.elts))
        elif isinstance(target, ast.Starred):
            names |= _assigned_names([target.value])
    return names


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    target = node.module or ""
    if not node.level:
        return target
    base = _package(module, is_package)
    for _ in range(node.level - 1):
        base = base.rpartition(".")[0]
    return f"{base}.{target}" if target else base


def base_classes(found: Found, depth: int = 0) -> list[Found] | None:
    """The classes ``found`` derives from, each read from source; None when a base is not a
    plain name (``a.B``, ``Generic[T]``) or is not a class the source shows."""
    if found.node is None:
        return None
    bases = []
    for base in found.node.bases:
        if not isinstance(base, ast.Name):
            return None
        if base.id == "object":
            continue
        parent = _find(found.module, base.id, depth + 1)
        if parent.kind != "class":
            return None
        bases.append(parent)
    return bases


def _derives(found: Found, depth: int) -> bool | None:
    if found.kind != "class" or found.node is None or depth > _MAX_DEPTH:
        return None
    if (found.module, found.node.name) == _OPTIMIZER_BASE:
        return True
    bases = base_classes(found, depth)
    if bases is None:
        return None
    verdicts = [_derives(b, depth + 1) for b in bases]
    if any(v is True for v in verdicts):
        return True
    return False if all(v is False for v in verdicts) else None
