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


def effective(requested: Iterable[str], decisions: dict[str, str]) -> frozenset[str]:
    """What an app holds: each requested permission the operator granted, and each
    requested one inside ``basic`` the operator did not revoke. ``decisions`` maps a
    permission to ``granted`` or ``revoked``."""
    return frozenset(p for p in requested if decisions.get(p) == "granted"
                     or (p in BASIC and decisions.get(p) != "revoked"))


def grant_command(app_id: str, perms: Iterable[str]) -> str:
    """The exact command an operator runs to grant ``perms`` to ``app_id``."""
    return f"estarter permissions grant {app_id} {' '.join(sorted(perms))}"


def ungranted_report(app_id: str, requested: Iterable[str],
                     granted: Iterable[str]) -> dict[str, object]:
    """Requested but not granted, and the command that grants them (None if none)."""
    missing = sorted(set(requested) - set(granted))
    return {"ungranted": missing,
            "grantCommand": grant_command(app_id, missing) if missing else None}
