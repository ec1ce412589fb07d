"""Where estarter keeps its state. One place, so every module agrees."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

PRIVATE_ZONES = ("appdata", "cache", "temp")
SHARED_ZONES = ("shared", "system")
ZONES = PRIVATE_ZONES + SHARED_ZONES


def default_home() -> Path:
    """``$ESTARTER_HOME``, else the platform's user data folder."""
    env = os.environ.get("ESTARTER_HOME")
    if env:
        return Path(env).expanduser().resolve()
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return (Path(base) / "estarter").resolve()


def home_key(home: str | os.PathLike[str]) -> str:
    """A short stable key of an ESTARTER_HOME: names of what a runtime of this home
    creates outside it (supervisor actors, the Ray head's temp dir) carry it, so
    runtimes of different homes never touch each other's."""
    return hashlib.sha256(str(Path(home).resolve()).encode()).hexdigest()[:10]


def zone_dir(home: Path, zone: str, app_id: str) -> Path:
    """The host folder behind ``/{zone}`` for ``app_id``."""
    if zone in PRIVATE_ZONES:
        return home / "vfs" / zone / app_id
    if zone in SHARED_ZONES:
        return home / "vfs" / zone
    raise ValueError(f"unknown zone {zone!r}")


def app_zones(home: Path, app_id: str) -> dict[str, Path]:
    return {zone: zone_dir(home, zone, app_id) for zone in ZONES}


def node_local_dir(home: Path, app_id: str) -> Path:
    """An app's working folder on a node that does not mount its zones (storage.py):
    this node's own, never a copy of ``/appdata``."""
    return home / "node-local" / app_id


def state_db(home: Path) -> Path:
    return home / "state.db"


def kernel_db(home: Path) -> Path:
    """Registry, notifications and tokens. Not ``state.db``: commits here must not
    look like grant changes to the permission checks watching that file."""
    return Path(home) / "kernel.db"


def log_file(home: Path, app_id: str) -> Path:
    return home / "logs" / f"{app_id}.log"


def run_dir(home: Path) -> Path:
    return home / "run"
