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
