"""The manifest's enums and the defaults hosts read, without pydantic.

A supervisor worker (one per app) unpickles a SandboxPolicy and runs a host; it
never validates a manifest. Importing ``estarter.manifest`` there loaded pydantic
and the manifest models: 8.8 MiB of each supervisor's private memory and tens of
ms of its start. ``estarter.manifest`` re-exports these names.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from .errors import ManifestError

DEFAULT_MAX_OPEN_FILES = 1024


class RuntimeKind(str, Enum):
    NATIVE = "native"
    WASM = "wasm"
    PYTHON = "python"
    DOTNET = "dotnet"


class RestartPolicy(str, Enum):
    NEVER = "never"
    ON_FAILURE = "on-failure"
    ALWAYS = "always"


def resolve_entry(app_dir: Path, entry: str) -> Path:
    """The manifest's ``entry`` as a real path; refuses one that leaves the folder
    (symlinks included)."""
    root = app_dir.resolve()
    target = (root / entry).resolve()
    if not target.is_relative_to(root):
        raise ManifestError(f"entry: {entry!r} resolves outside the app folder",
                            {"key": "entry"})
    return target
