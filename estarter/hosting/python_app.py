"""How a ``python``-runtime app is started: the standard library, the SDK and its
own folder on ``sys.path``, and nothing of estarter's own dependencies.

The interpreter is the base installation behind our venv, run with ``-I -S -B``:
no ``PYTHON*`` variables, no user site, no ``site`` at all (so no site-packages,
neither the venv's, where Ray and pydantic live, nor the base's), no .pyc files in
the app folder. A short bootstrap (``-c``) puts the app's folder, the SDK and the
app's own dependencies (installed by ``estarter install`` from its
``requirements.txt``) first on ``sys.path`` and runs the entry as ``__main__``.

In the sandbox the SDK is bound at ``SDK_MOUNT`` and the dependencies at
``DEPS_MOUNT``; the base install is bound with its site-packages masked, so the
app cannot reach them by path either. Without bwrap (a degraded host, reported as
such) the bootstrap falls back to the host paths.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
import sysconfig
from pathlib import Path

SDK_MOUNT = "/estarter-sdk"
DEPS_MOUNT = "/estarter-deps"

# argv[1] = the entry, argv[2] = the app folder, argv[3] = the SDK's host parent,
# argv[4] = the dependencies' host folder or ""; the app sees argv from the entry on.
# The entry runs as ``runpy.run_path(entry, run_name="__main__")`` would run a source
# file (a fresh ``__main__`` module with ``__file__`` set), without importing runpy:
# runpy pulls in pkgutil, typing and re, 10 to 45 ms of every launch here (issue 15).
BOOT = (
    "import os, sys\n"
    "entry, folder, sdk, deps = sys.argv[1:5]\n"
    f"sdk = {SDK_MOUNT!r} if os.path.isdir({SDK_MOUNT!r} + '/sdk') else sdk\n"
    f"deps = {DEPS_MOUNT!r} if os.path.isdir({DEPS_MOUNT!r}) else deps\n"
    "sys.argv = [entry, *sys.argv[5:]]\n"
    "sys.path[:0] = [p for p in (folder, sdk, deps) if p]\n"
    "with open(entry, 'rb') as src:\n"
    "    code = compile(src.read(), entry, 'exec', dont_inherit=True)\n"
    "main = type(sys)('__main__')\n"
    "main.__file__, main.__cached__, main.__package__ = entry, None, ''\n"
    "main.__builtins__ = __builtins__\n"
    "sys.modules['__main__'] = main\n"
    "del os, entry, folder, sdk, deps, src\n"
    "exec(code, main.__dict__)\n"
)


# The interpreter, its install and the SDK do not move while a process runs: each is
# found once per process (sysconfig's expansions alone were 1.2 ms of every plan).
@functools.cache
def interpreter() -> str:
    """The base interpreter (not the venv's launcher, which would pull in its site)."""
    return os.path.realpath(getattr(sys, "_base_executable", sys.executable))


@functools.cache
def sdk_dir() -> Path | None:
    """The ``sdk`` package folder (an editable install points into the repo)."""
    spec = importlib.util.find_spec("sdk")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def command(entry: Path, app_dir: Path, args: tuple[str, ...],
            deps: Path | None = None) -> list[str]:
    """The argv of a ``python`` app."""
    sdk = sdk_dir()
    return [interpreter(), "-I", "-S", "-B", "-c", BOOT, str(entry), str(app_dir),
            str(sdk.parent) if sdk else "", str(deps) if deps else "", *args]


@functools.cache
def base_prefix() -> Path:
    return Path(os.path.realpath(sys.base_prefix))


def warm() -> None:
    """Find them now (a supervisor waiting in the pool calls this): else a new
    worker's first launch found them, 1.7 ms of its plan here."""
    interpreter()
    sdk_dir()
    _site_packages()


def site_packages() -> list[Path]:
    """The base installation's site-packages folders (masked in the sandbox)."""
    return list(_site_packages())


@functools.cache
def _site_packages() -> tuple[Path, ...]:
    base = str(base_prefix())
    found = {sysconfig.get_path(name, vars={"base": base, "platbase": base})
             for name in ("purelib", "platlib")}
    return tuple(sorted(Path(p) for p in found if p and os.path.isdir(p)))
