"""The layer rule of docs/DESIGN.md, checked on every import statement of the
source tree, function-local ones included (read from the AST, nothing imported):

    sdk (stdlib only)  <-  estarter (core: no Ray)  <-  actors (the only Ray)  <-  composition

- ``sdk`` imports the standard library and ``sdk`` only;
- ``estarter`` never imports ``ray``, and ``actors`` only in its composition points
  (``COMPOSITION``: the Python API's Runtime and the persistent runtime's up/down),
  where a mode is chosen;
- in ``actors`` only ``ray_api`` imports ``ray`` and calls ``.remote``: every Ray
  call goes through it.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMPOSITION = {"estarter/runtime.py", "estarter/daemon.py"}
RAY_MODULE = "actors/ray_api.py"


def imports(package: str) -> Iterator[tuple[str, int, str]]:
    """(file, line, top-level module imported) for every import in ``package``."""
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield rel, node.lineno, alias.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                yield rel, node.lineno, node.module.split(".")[0]


def test_sdk_imports_only_the_standard_library() -> None:
    bad = [(f, n, m) for f, n, m in imports("sdk")
           if m != "sdk" and m not in sys.stdlib_module_names]
    assert bad == []


def test_core_neither_imports_ray_nor_drives_actors_outside_composition() -> None:
    bad = [(f, n, m) for f, n, m in imports("estarter")
           if m == "ray" or (m == "actors" and f not in COMPOSITION)]
    assert bad == []


def test_only_ray_api_imports_ray() -> None:
    bad = [(f, n, m) for f, n, m in imports("actors") if m == "ray" and f != RAY_MODULE]
    assert bad == []


def test_every_ray_call_of_actors_goes_through_ray_api() -> None:
    """No ``x.remote(...)`` outside ray_api: submitting, waiting, creating and
    telling are ray_api's (``call``, ``submit``, ``tell``, ``create``, ``get``), so
    a unit test replaces one module to fake Ray."""
    bad = []
    for path in sorted((ROOT / "actors").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel == RAY_MODULE:
            continue
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "remote"
                    and not (isinstance(node.func.value, ast.Name)
                             and node.func.value.id == "ray_api")):  # ray_api.remote()
                bad.append((rel, node.lineno))
    assert bad == []


def test_the_walk_sees_function_local_imports() -> None:
    found = {(f, m) for f, _, m in imports("estarter")}
    assert ("estarter/runtime.py", "actors") in found  # imported inside methods only


# -- import cycles ------------------------------------------------------------------
# The composition modules (CLI, console, Runtime, up/down) may import one another
# inside functions to pick a mode; below them, nothing imports in a circle.
COMPOSITION_PREFIXES = ("estarter.cli", "estarter.console", "estarter.runtime",
                        "estarter.daemon")


def _modules(package: str) -> dict[str, Path]:
    out = {}
    for path in (ROOT / package).rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _graph(package: str, top_level_only: bool) -> dict[str, set[str]]:
    """module -> the modules of ``package`` it imports (``from X import sub`` names
    the submodule, not the package; TYPE_CHECKING blocks count, being top level)."""
    mods = _modules(package)
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text())
        nodes = ast.walk(tree) if not top_level_only else (
            n for stmt in tree.body for n in ast.walk(stmt)
            if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))
        for node in nodes:
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = mod.split(".")
                    if path.name != "__init__.py":
                        parts = parts[:-1]
                    parts = parts[:len(parts) - (node.level - 1)]
                    base = ".".join(parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
                targets = subs if len(subs) == len(node.names) else [base, *subs]
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != mod:
                    edges[mod].add(target)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_import_cycle_at_module_level() -> None:
    assert _cycles(_graph("estarter", top_level_only=True)) == []


def test_no_import_cycle_below_composition_even_inside_functions() -> None:
    edges = _graph("estarter", top_level_only=False)
    below = {m: {t for t in ts if not t.startswith(COMPOSITION_PREFIXES)}
             for m, ts in edges.items() if not m.startswith(COMPOSITION_PREFIXES)}
    assert _cycles(below) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_core_submits_no_ray_call_itself() -> None:
    """The composition points (up/down, Runtime) reach Ray through ray_api too."""
    bad = []
    for path in sorted((ROOT / "estarter").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "remote"):
                bad.append((rel, node.lineno))
    assert bad == []
