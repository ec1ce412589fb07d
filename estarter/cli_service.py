"""``estarter service install|uninstall``: the runtime of a home as a systemd unit.

See ``estarter.service`` for the unit and why it is ``Type=forking``. ``mount(app)``
adds the ``service`` group to the main CLI.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from . import service
from .cli_apps import HomeOpt, JsonOpt, emit, err, errors_exit_2, home_of, out

service_app = typer.Typer(no_args_is_help=True,
                          help="Start the runtime at boot: a systemd unit for this home.")


@service_app.command("install")
def install(
    address: Annotated[str | None, typer.Option(
        "--address", help="The unit's up joins this Ray cluster")] = None,
    unit_dir: Annotated[Path | None, typer.Option(
        "--unit-dir", help="Where to write the unit (default: /etc/systemd/system as root, "
                           "else ~/.config/systemd/user)")] = None,
    home: HomeOpt = None, as_json: JsonOpt = False,
) -> None:
    """Write (and, where systemd runs, enable) a unit running up/down for this home."""
    root = home_of(home)
    with errors_exit_2():
        result = service.install(root, address, unit_dir)

    def human() -> None:
        out.print(f"wrote {result['path']} (unit {result['unit']}):", markup=False)
        out.print(result["content"], markup=False)
        if result["enabled"]:
            ctl = "systemctl --user" if result["user"] else "systemctl"
            out.print(f"enabled: starts at boot; `estarter up` / `down` now run "
                      f"`{ctl} start|stop {result['unit']}`", markup=False)
        if result.get("note"):
            err.print(f"note: {result['note']}", markup=False)

    emit(result, as_json, human)


@service_app.command("uninstall")
def uninstall(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Disable and remove this home's unit (a running runtime keeps running)."""
    root = home_of(home)
    with errors_exit_2():
        result = service.uninstall(root)
    emit(result, as_json, lambda: out.print(
        f"removed {result['path']}" if result["removed"]
        else f"no unit was installed for {root}", markup=False))


def delegated(root: Path, action: str, as_json: bool) -> bool:
    """``up`` / ``down`` (``action``) as ``systemctl start|stop`` when this home's unit
    is installed and systemd runs: done and printed here, True. Else False (the
    caller does it directly), after a note if a unit is installed but systemd is
    absent."""
    from .daemon import reachable, read_runtime

    svc = service.managed(root)
    if svc is None:
        if service.installed(root) is not None and not service.systemd_running() \
                and not os.environ.get(service.SERVICE_ENV):
            err.print(f"note: {service.absent_note()}", markup=False)
        return False
    before = read_runtime(root)
    was_up = before is not None and reachable(before.address)
    verb = "start" if action == "up" else "stop"
    with errors_exit_2(), err.status(f"systemctl {verb} {svc.unit}", spinner="dots"):
        (service.start if action == "up" else service.stop)(svc)
    result: dict[str, Any]
    if action == "up":
        info = read_runtime(root)
        result = {"status": "already up" if was_up else "started",
                  **(info.to_json() if info else {}), "service": svc.unit}
        line = (f"estarter runtime {result['status']} by systemd ({svc.unit}) at "
                f"{result.get('address')} (home {root})")
    else:
        result = {"stopped": was_up, "service": svc.unit}
        line = f"stopped by systemd ({svc.unit})"
    emit(result, as_json, lambda: out.print(line, markup=False))
    return True


def mount(main: typer.Typer) -> None:
    main.add_typer(service_app, name="service")
