"""How a ``dotnet``-runtime app is started: ``dotnet ENTRY ARGS`` with the host's .NET host.

The original program's apps were .NET assemblies. estarter ships no .NET: an app with
``runtime: dotnet`` runs where a .NET host is installed, i.e. ``dotnet`` is on the
PATH of the process that hosts the app (the supervisor). Without one, install and
launch refuse it with :data:`MISSING`; a supervisor on a node without one fails the
launch with the same words.

The command is the real path of the ``dotnet`` found (``/usr/bin/dotnet`` is usually
a symlink into the install folder, which holds ``host/fxr`` and ``shared/``). In the
sandbox that install folder is bound read-only at its own path when it is not under
``/usr`` (which every sandbox has), as the Python interpreter's install is.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import NotSupported

MISSING = ("runtime dotnet needs a .NET host, and `dotnet` is not on PATH here "
           "(install the .NET runtime, e.g. the dotnet-runtime package, and retry)")


def host(path: str | None = None) -> Path | None:
    """The real path of the ``dotnet`` host on ``path`` (default: $PATH), or None."""
    found = shutil.which("dotnet", path=path)
    return Path(os.path.realpath(found)) if found else None


def require(path: str | None = None) -> Path:
    """The ``dotnet`` host; NotSupported with :data:`MISSING` when there is none."""
    found = host(path)
    if found is None:
        raise NotSupported(MISSING, {"runtime": "dotnet"})
    return found


def command(entry: Path, args: tuple[str, ...], dotnet: Path | None = None) -> list[str]:
    """The argv of a ``dotnet`` app: ``dotnet ENTRY ARGS``."""
    return [str(dotnet or require()), str(entry), *args]


def mounts(dotnet: Path) -> list[str]:
    """bwrap arguments that show the .NET install read-only (nothing under /usr:
    every sandbox has /usr already)."""
    root = dotnet.parent
    if root == Path("/usr") or Path("/usr") in root.parents:
        return []
    return ["--ro-bind", str(root), str(root)]
