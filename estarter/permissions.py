"""Permission names, bundles, the original program's aliases and what each allows. No I/O.

The device permissions (``DEVICES``) stand for a piece of the host (a camera, a
microphone, a location provider, a display server): they belong to no bundle, are
granted only by name, and only where the host has the device
(``estarter.devices`` probes; ``PermissionManager.grant`` refuses otherwise).
"""

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
    "device.camera",
    "device.mic",
    "device.location",
    "ui.overlay",
)

# Granted only by name and only where the host has the device: in no bundle.
DEVICES: frozenset[str] = frozenset({"device.camera", "device.mic", "device.location",
                                     "ui.overlay"})

BASIC: frozenset[str] = frozenset({"fs.read", "ui.notification", "ipc.send", "ipc.receive"})
STANDARD: frozenset[str] = BASIC | {"fs.write", "ui.clipboard", "ui.dialog", "process.launch"}
FULL: frozenset[str] = frozenset(ALL) - {"admin"} - DEVICES
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
    "Camera": "device.camera",
    "Mic": "device.mic",
    "Microphone": "device.mic",
    "Location": "device.location",
    "Overlay": "ui.overlay",
    "Basic": "basic",
    "Standard": "standard",
    "Full": "full",
}

# What each name allows: the words of the manifest schema, ``manifest check`` and DESIGN.
MEANINGS: dict[str, str] = {
    "fs.read": "read files of the app's VFS zones (/appdata, /cache, /temp, /shared, "
               "/system) with fs.read/list/exists/stat; registry.get/list; the zones are "
               "mounted read-only in the sandbox",
    "fs.write": "create and overwrite files in the app's zones (fs.write, fs.mkdir) "
                "within diskQuotaMb; registry.set/delete",
    "fs.delete": "delete files and folders in the app's zones (fs.delete)",
    "net.access": "the network, together with networkAllowed: true (without both the "
                  "sandbox has loopback only)",
    "net.listen": "reserved for accepting incoming connections; no method needs it yet",
    "ui.notification": "show notifications to the operator (ui.notify)",
    "ui.clipboard": "read and set the clipboard text (ui.clipboard.get/set)",
    "ui.dialog": "reserved for dialogs with the operator; no method needs it yet",
    "process.launch": "launch other installed apps (process.launch)",
    "process.kill": "stop other apps (process.terminate)",
    "system.info": "read host and app facts: system.info, process.list, process.info",
    "system.settings": "reserved for changing estarter's settings; no method needs it yet",
    "ipc.send": "send messages to other apps (ipc.send)",
    "ipc.receive": "subscribe to topics and receive messages (ipc.subscribe, ipc.receive)",
    "ipc.broadcast": "send a message to every subscriber of a topic (ipc.broadcast)",
    "admin": "everything, including system.shutdown and sandboxed: false (the app then "
             "sees the host's folders read-only)",
    "device.camera": "the host's cameras (/dev/video* inside the sandbox); granted only "
                     "where the host has one (original name: Camera)",
    "device.mic": "the host's audio capture devices (ALSA /dev/snd/pcm*c, with the "
                  "control devices, inside the sandbox); granted only where the host has "
                  "one (original name: Mic)",
    "device.location": "the host's location provider, gpsd (its socket, /run/gpsd.sock or "
                       "$GPSD_SOCKET, inside the sandbox); granted only where gpsd runs "
                       "(original name: Location)",
    "ui.overlay": "draw over other windows: a connection to the host's display server "
                  "(its Wayland or X11 socket and DISPLAY/WAYLAND_DISPLAY inside the "
                  "sandbox); granted only where one runs (original name: Overlay)",
    "basic": "bundle: " + ", ".join(sorted(BASIC)) + " (what an app without a "
             "permissions key asks for; granted without asking)",
    "standard": "bundle: basic + " + ", ".join(sorted(STANDARD - BASIC)),
    "full": "bundle: every permission but admin and the device permissions",
}


def describe(name: str) -> str:
    """What a permission, bundle or alias allows (ValueError if unknown)."""
    canonical = ALIASES.get(name, name)
    if canonical not in MEANINGS:
        raise ValueError(f"unknown permission {name!r}")
    return MEANINGS[canonical]


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


def ungranted_report(app_id: str, requested: Iterable[str], granted: Iterable[str],
                     refused: dict[str, str] | None = None) -> dict[str, object]:
    """Requested but not granted, and the command that grants them (None if none).
    ``refused``: device permissions this host cannot give, with the reason (reported
    under ``refused``, and left out of the command)."""
    missing = sorted(set(requested) - set(granted))
    grantable = [p for p in missing if p not in (refused or {})]
    report: dict[str, object] = {
        "ungranted": missing,
        "grantCommand": grant_command(app_id, grantable) if grantable else None}
    if refused:
        report["refused"] = dict(sorted(refused.items()))
    return report
