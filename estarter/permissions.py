"""Permission names, bundles and the original program's aliases. No I/O."""

from __future__ import annotations

from collections.abc import Iterable

ALL: tuple[str, ...] = (
    "fs.read",
    "fs.write",
    "fs.delete",
    "net.access",
    "net.listen",
    "ui.notification",
    "ui.clipboard",
    "ui.dialog",
    "process.launch",
    "process.kill",
    "system.info",
    "system.settings",
    "ipc.send",
    "ipc.receive",
    "ipc.broadcast",
    "admin",
)

BASIC: frozenset[str] = frozenset({"fs.read", "ui.notification", "ipc.send", "ipc.receive"})
STANDARD: frozenset[str] = BASIC | {"fs.write", "ui.clipboard", "ui.dialog", "process.launch"}
FULL: frozenset[str] = frozenset(ALL) - {"admin"}
BUNDLES: dict[str, frozenset[str]] = {"basic": BASIC, "standard": STANDARD, "full": FULL}

# eStarter's C# flag names.
ALIASES: dict[str, str] = {
    "FileRead": "fs.read",
    "FileWrite": "fs.write",
    "FileDelete": "fs.delete",
    "NetworkAccess": "net.access",
    "NetworkListen": "net.listen",
    "Notification": "ui.notification",
    "UiNotification": "ui.notification",
    "Clipboard": "ui.clipboard",
    "UiClipboard": "ui.clipboard",
    "Dialog": "ui.dialog",
    "UiDialog": "ui.dialog",
    "ProcessLaunch": "process.launch",
    "ProcessKill": "process.kill",
    "SystemInfo": "system.info",
    "SystemSettings": "system.settings",
    "IpcSend": "ipc.send",
    "IpcReceive": "ipc.receive",
    "IpcBroadcast": "ipc.broadcast",
    "Admin": "admin",
    "Basic": "basic",
    "Standard": "standard",
    "Full": "full",
}


def normalize(name: str) -> frozenset[str]:
    """One permission or bundle name (or alias) -> the permissions it stands for.

    Raises ValueError naming the unknown name.
    """
    canonical = ALIASES.get(name, name)
    if canonical in BUNDLES:
        return BUNDLES[canonical]
    if canonical in ALL:
        return frozenset({canonical})
    raise ValueError(f"unknown permission {name!r}")


def expand(names: Iterable[str]) -> frozenset[str]:
    """Names as written in a manifest -> the requested set; empty means ``basic``."""
    out: set[str] = set()
    for name in names:
        out |= normalize(name)
    return frozenset(out) if out else BASIC
