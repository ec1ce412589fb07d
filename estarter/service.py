"""``estarter service install|uninstall``: a systemd unit that runs ``up`` at boot.

The unit runs ``estarter up`` and ``estarter down`` for one ESTARTER_HOME. ``up``
returns once the runtime is up and leaves the Ray head running in a session of its
own, so the unit is ``Type=forking`` and systemd tracks the head's GCS server through
``PIDFile=$ESTARTER_HOME/run/head.pid`` (written by ``up``): if the head dies, the
unit fails and ``Restart=on-failure`` runs ``up`` again, which says the old record is
stale, cleans up and relaunches the apps that should run. A unit that joins a
cluster (``--address``) has no head of its own to track: ``Type=oneshot`` with
``RemainAfterExit=yes``.

Where a unit is installed and systemd runs, ``up`` and ``down`` become ``systemctl
start|stop`` (``ESTARTER_SERVICE=1``, set in the unit, marks the unit's own calls).
What was installed is recorded in ``$ESTARTER_HOME/run/service.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import EstarterError
from .paths import run_dir
from .state import home_key

RECORD = "service.json"
SERVICE_ENV = "ESTARTER_SERVICE"  # set in the unit: up/down run directly there
SYSTEMCTL_SECONDS = 330.0  # beyond the unit's own TimeoutStartSec

# (argv) -> (returncode, output); replaced by tests.
Runner = Callable[[Sequence[str]], tuple[int, str]]


@dataclass(frozen=True)
class Service:
    """An installed unit: its name, file and whether it is a user unit."""

    unit: str
    path: str
    user: bool

    def systemctl(self, *args: str) -> list[str]:
        return ["systemctl", *(["--user"] if self.user else []), *args]


def unit_name(home: Path) -> str:
    return f"estarter-{home_key(home)}.service"


def default_unit_dir(user: bool) -> Path:
    if user:
        base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        return Path(base) / "systemd" / "user"
    return Path("/etc/systemd/system")


def estarter_command() -> list[str]:
    """How the unit runs this estarter: the console script beside this Python."""
    script = Path(sys.executable).with_name("estarter")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "estarter"]


def literal(text: str) -> str:
    """A unit setting's value taken as is: ``%`` escaped (systemd's specifiers)."""
    return text.replace("%", "%%")


def quote(arg: str, command: bool = True) -> str:
    """One word of a command line (``command``: ``$`` escaped too, systemd expands
    variables there) or an ``Environment=`` assignment: quoted when it holds a space,
    a quote, a backslash or a semicolon."""
    arg = literal(arg)
    if command:
        arg = arg.replace("$", "$$")
    if any(c in arg for c in ' \t"\'\\;'):
        return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return arg


def unit_text(home: Path, command: Sequence[str], address: str | None = None,
              user: bool = False) -> str:
    """The unit file for ``home``. Pure: tests read it, systemd-analyze verifies it."""
    home = Path(home)
    if any(ord(c) < 32 for c in f"{home}{address or ''}{''.join(command)}"):
        raise EstarterError(f"{home!r}: a control character cannot be written in a unit")
    exe = " ".join(quote(a) for a in command)
    join = f" --address {quote(address)}" if address else ""
    if address:
        kind = ["Type=oneshot", "RemainAfterExit=yes"]
    else:
        kind = ["Type=forking", f"PIDFile={literal(str(run_dir(home) / 'head.pid'))}",
                "Restart=on-failure", "RestartSec=5"]
    return "\n".join([
        f"# Written by `estarter service install` for ESTARTER_HOME={home}.",
        "# Remove it with `estarter service uninstall`.",
        "[Unit]",
        f"Description=estarter runtime ({literal(str(home))})",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        *kind,
        f"Environment={quote(f'ESTARTER_HOME={home}', command=False)}",
        f"Environment={SERVICE_ENV}=1",
        f"ExecStart={exe} up --home {quote(str(home))}{join}",
        f"ExecStop={exe} down --home {quote(str(home))}",
        "TimeoutStartSec=300",
        "TimeoutStopSec=180",
        "KillMode=control-group",
        "",
        "[Install]",
        f"WantedBy={'default.target' if user else 'multi-user.target'}",
        "",
    ])


def systemd_running() -> bool:
    """Is systemd this host's service manager (sd_booted's test)?"""
    return os.path.isdir("/run/systemd/system")


def pid1() -> str:
    with contextlib.suppress(OSError):
        return Path("/proc/1/comm").read_text().strip()
    return "unknown"


def absent_note() -> str:
    return (f"systemd is not running on this host (PID 1 is {pid1()}): the unit is not "
            "enabled, and `estarter up` / `down` start and stop the runtime directly")


def run_command(argv: Sequence[str]) -> tuple[int, str]:
    if shutil.which(argv[0]) is None:
        return 127, f"{argv[0]}: not found"
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True,
                              timeout=SYSTEMCTL_SECONDS)
    except subprocess.TimeoutExpired:
        return 124, f"{' '.join(argv)}: no answer within {SYSTEMCTL_SECONDS:.0f} s"
    return proc.returncode, (proc.stderr or proc.stdout).strip()


def installed(home: Path) -> Service | None:
    """The unit ``service install`` wrote for ``home`` (and that is still there)."""
    try:
        data = json.loads((run_dir(home) / RECORD).read_text())
        service = Service(str(data["unit"]), str(data["path"]), bool(data["user"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return service if Path(service.path).is_file() else None


def managed(home: Path) -> Service | None:
    """The unit that ``up`` / ``down`` hand over to systemctl, or None: none is
    installed, systemd does not run here, or this is the unit's own ``up``."""
    if os.environ.get(SERVICE_ENV):
        return None
    service = installed(home)
    return service if service is not None and systemd_running() else None


def install(home: Path, address: str | None = None, unit_dir: Path | None = None,
            user: bool | None = None, run: Runner | None = None) -> dict[str, Any]:
    """Write the unit (atomically), record it; with systemd, reload and enable it."""
    user = os.geteuid() != 0 if user is None else user
    folder = unit_dir or default_unit_dir(user)
    name = unit_name(home)
    text = unit_text(home, estarter_command(), address, user)
    path = folder / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        raise EstarterError(f"cannot write {path}: {exc.strerror}") from None
    service = Service(name, str(path), user)
    record = run_dir(home) / RECORD
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(asdict(service)))
    result: dict[str, Any] = {"unit": name, "path": str(path), "user": user, "content": text,
                              "systemd": systemd_running(), "enabled": False}
    if not result["systemd"]:
        result["note"] = absent_note()
        return result
    for args in (("daemon-reload",), ("enable", name)):
        code, output = (run or run_command)(service.systemctl(*args))
        if code != 0:
            raise EstarterError(f"{' '.join(service.systemctl(*args))} failed: {output}")
    result["enabled"] = True
    if user:
        result["note"] = ("a user unit starts at boot only with lingering: "
                          "loginctl enable-linger")
    return result


def uninstall(home: Path, run: Runner | None = None) -> dict[str, Any]:
    """Disable (with systemd) and remove the unit; the runtime itself is left as it is."""
    service = installed(home)
    with contextlib.suppress(FileNotFoundError):
        (run_dir(home) / RECORD).unlink()
    if service is None:
        return {"unit": unit_name(home), "removed": False, "systemd": systemd_running()}
    run = run or run_command
    if systemd_running():
        run(service.systemctl("disable", service.unit))
    with contextlib.suppress(FileNotFoundError):
        Path(service.path).unlink()
    if systemd_running():
        run(service.systemctl("daemon-reload"))
    return {"unit": service.unit, "path": service.path, "removed": True,
            "systemd": systemd_running()}


def start(service: Service, run: Runner | None = None) -> None:
    """``systemctl start``; an EstarterError naming the journal if it fails."""
    _control(service, "start", run)


def stop(service: Service, run: Runner | None = None) -> None:
    _control(service, "stop", run)


def _control(service: Service, action: str, run: Runner | None) -> None:
    code, output = (run or run_command)(service.systemctl(action, service.unit))
    if code != 0:
        journal = f"journalctl {'--user ' if service.user else ''}-u {service.unit}"
        raise EstarterError(f"systemctl {action} {service.unit} failed: {output} "
                            f"(see {journal})")


__all__ = [
    "Service",
    "install",
    "installed",
    "managed",
    "start",
    "stop",
    "systemd_running",
    "uninstall",
    "unit_name",
    "unit_text",
]
