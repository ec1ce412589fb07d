"""Does this host have the device a device permission stands for?

The original program's Camera, Mic, Location and Overlay permissions (here
``device.camera``, ``device.mic``, ``device.location``, ``ui.overlay``) are granted
only where the host has such a device; anywhere else the grant is refused with the
reason :func:`probe` gives. Each probe is a few ``stat`` calls (no device is opened),
on the machine that decides the grant (the permission authority's: this process in
local mode, the ``estarter-permissions`` actor's node with Ray).

- camera: a character device ``/dev/video*`` (V4L2);
- mic: an ALSA capture device ``/dev/snd/pcmC*D*c``;
- location: the gpsd socket, ``$GPSD_SOCKET`` or ``/run/gpsd.sock`` /
  ``/var/run/gpsd.sock`` (gpsd is the one provider: no network geolocation);
- overlay: a display server's socket, Wayland (``$XDG_RUNTIME_DIR/$WAYLAND_DISPLAY``)
  or X11 (``/tmp/.X11-unix/X<n>`` for ``DISPLAY=:<n>``; TCP displays are not counted).

The host root and environment are passed in, so tests probe a fake ``/dev``.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from . import permissions as names

GPSD_SOCKETS = ("run/gpsd.sock", "var/run/gpsd.sock")


@dataclass(frozen=True)
class Probe:
    """What a probe found: ``paths`` the app would be given, or ``reason`` it is refused."""

    permission: str
    paths: tuple[Path, ...]
    reason: str

    @property
    def available(self) -> bool:
        return bool(self.paths)


def probe(permission: str, root: Path = Path("/"),
          env: Mapping[str, str] | None = None) -> Probe:
    """Probe the device behind one device permission (ValueError for another name)."""
    env = os.environ if env is None else env
    if permission == "device.camera":
        found = _chars(root / "dev", "video*")
        why = "this host has no camera (no /dev/video* device)"
    elif permission == "device.mic":
        found = _chars(root / "dev" / "snd", "pcmC*D*c")
        why = "this host has no microphone (no ALSA capture device /dev/snd/pcmC*D*c)"
    elif permission == "device.location":
        candidates = [Path(env["GPSD_SOCKET"])] if env.get("GPSD_SOCKET") else []
        candidates += [root / rel for rel in GPSD_SOCKETS]
        found = _sockets(candidates)[:1]
        why = ("this host has no location provider (no gpsd socket at "
               + ", ".join(["$GPSD_SOCKET", *("/" + rel for rel in GPSD_SOCKETS)]) + ")")
    elif permission == "ui.overlay":
        found = _sockets(_display_sockets(root, env))[:1]
        why = ("this host has no display server (no Wayland socket "
               "$XDG_RUNTIME_DIR/$WAYLAND_DISPLAY, no X11 socket /tmp/.X11-unix/X<n> "
               "for $DISPLAY)")
    else:
        raise ValueError(f"{permission!r} is not a device permission")
    return Probe(permission, tuple(found), "" if found else why)


def refusals(perms: Iterable[str], root: Path = Path("/"),
             env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The device permissions among ``perms`` this host cannot give, with the reason."""
    out: dict[str, str] = {}
    for perm in sorted(set(perms) & names.DEVICES):
        found = probe(perm, root, env)
        if not found.available:
            out[perm] = f"{perm} cannot be granted: {found.reason}"
    return out


def split(perms: Iterable[str], root: Path = Path("/"),
          env: Mapping[str, str] | None = None) -> tuple[frozenset[str], dict[str, str]]:
    """``perms`` this host can give, and the refused ones with the reason (what
    ``--grant-all`` grants and reports)."""
    wanted = frozenset(perms)
    refused = refusals(wanted, root, env)
    return wanted - refused.keys(), refused


def sandbox_args(granted: Iterable[str], root: Path = Path("/"),
                 env: Mapping[str, str] | None = None) -> list[str]:
    """bwrap arguments that show a sandboxed app the devices it was granted, probed
    now (at launch, on the app's node): camera nodes and the ALSA folder as devices,
    the gpsd or display socket bound read-only (``connect`` still works), and the
    display's variable set. A device gone since the grant is left out."""
    argv: list[str] = []
    for perm in sorted(set(granted) & names.DEVICES):
        found = probe(perm, root, env)
        if perm == "device.camera":
            for path in found.paths:
                argv += ["--dev-bind", str(path), "/" + str(path.relative_to(root))]
        elif perm == "device.mic" and found.available:
            argv += ["--dev-bind", str(root / "dev" / "snd"), "/dev/snd"]
        elif perm == "device.location" and found.available:
            argv += ["--ro-bind", str(found.paths[0]), "/run/gpsd.sock",
                     "--setenv", "GPSD_SOCKET", "/run/gpsd.sock"]
        elif perm == "ui.overlay" and found.available:
            sock = found.paths[0]
            if sock.parent.name == ".X11-unix":
                argv += ["--ro-bind", str(sock), f"/tmp/.X11-unix/{sock.name}",
                         "--setenv", "DISPLAY", f":{sock.name.removeprefix('X')}"]
            else:
                argv += ["--ro-bind", str(sock), "/run/wayland-0",
                         "--setenv", "WAYLAND_DISPLAY", "/run/wayland-0"]
    return argv


def _chars(folder: Path, pattern: str) -> list[Path]:
    try:
        entries = sorted(folder.glob(pattern))
    except OSError:
        return []
    return [p for p in entries if _is(p, stat.S_ISCHR)]


def _sockets(paths: Iterable[Path]) -> list[Path]:
    return [p for p in paths if _is(p, stat.S_ISSOCK)]


def _display_sockets(root: Path, env: Mapping[str, str]) -> list[Path]:
    out: list[Path] = []
    wayland, runtime_dir = env.get("WAYLAND_DISPLAY", ""), env.get("XDG_RUNTIME_DIR", "")
    if wayland:
        out.append(Path(wayland) if wayland.startswith("/") else Path(runtime_dir) / wayland)
    match = re.fullmatch(r"(?:unix)?:(\d+)(?:\.\d+)?", env.get("DISPLAY", ""))
    if match:
        out.append(root / "tmp" / ".X11-unix" / f"X{match.group(1)}")
    return out


def _is(path: Path, kind: Callable[[int], bool]) -> bool:
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return kind(mode)
