"""CLI commands for an app's versions and configuration: ``rollback``, and
``config set|get|list|unset``; plus what ``install`` does after an upgrade.

Files first (the store, the config folder), so every one works with no runtime
up. When one is up and its records say the app runs, the running app is moved to
the installed version through ``Runtime.connect`` (``Runtime.reload``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from .cli_apps import (
    GraceOpt,
    HomeOpt,
    JsonOpt,
    connected,
    emit,
    errors_exit_2,
    fail,
    home_of,
    out,
)

DeferOpt = Annotated[bool, typer.Option(
    "--no-restart", "--defer",
    help="Do not restart a running app: the new version runs from its next start")]

_LIVE = ("starting", "running", "stopping")


def restart_if_running(root: Path, app_id: str, grace: float) -> bool:
    """Move the app to the installed version if a runtime that is up runs it. The
    records (kernel.db) say whether it may be running: no Ray driver is started for
    an app that is not. True if it was restarted."""
    from .apps import list_installed
    from .daemon import read_runtime

    if read_runtime(root) is None:
        return False
    with errors_exit_2():
        rows = {r["appId"]: r for r in list_installed(root)}
    if rows.get(app_id, {}).get("state") not in _LIVE:
        return False
    with connected(root) as rt:
        return rt.reload(app_id, grace) is not None


def after_install(root: Path, row: dict[str, Any], defer: bool, grace: float
                  ) -> dict[str, Any]:
    """``install``'s last step: the running app restarted on the new version, unless
    ``defer``. Returns the row with ``restarted``."""
    restarted = False if defer else restart_if_running(root, row["appId"], grace)
    return {**row, "restarted": restarted}


def say_restarted(row: dict[str, Any], defer: bool) -> None:
    if row.get("restarted"):
        out.print(f"{row['appId']} restarted on {row['version']}", markup=False)
    elif defer:
        out.print(f"{row['appId']}: a running copy keeps its version until its next start",
                  markup=False)


def rollback(app_id: str, defer: DeferOpt = False, grace: GraceOpt = 5.0,
             home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Go back to the version the last install replaced (again: forward), and restart
    the app on it if it runs."""
    from .apps import rollback as do_rollback

    root = home_of(home)
    with errors_exit_2():
        row = do_rollback(root, app_id)
    row = after_install(root, row, defer, grace)

    def human() -> None:
        out.print(f"{app_id}: rolled back from {row['from']} to {row['version']}",
                  markup=False)
        say_restarted(row, defer)

    emit(row, as_json, human)


# -- config ----------------------------------------------------------------------

config_app = typer.Typer(no_args_is_help=True, help=(
    "An app's configuration: values for the variables its manifest's env declares, "
    "given to it at its next start. Secrets are stored 0600 and never printed."))


def _manifest(root: Path, app_id: str) -> Any:
    from .store import AppStore

    with errors_exit_2():
        return AppStore(root).get(app_id)[0]


def _shown(row: dict[str, Any]) -> str:
    if row["secret"]:
        return "(secret, set)" if row["set"] else "(secret, not set)"
    if row["value"] is None:
        return "(not set)"
    return repr(row["value"]) + (" (default)" if row["source"] == "default" else "")


@config_app.command("set")
def config_set(app_id: str,
               assignment: Annotated[str, typer.Argument(
                   metavar="NAME=VALUE",
                   help="NAME=VALUE; NAME alone (or NAME=-) with --secret reads the "
                        "value from stdin, so it stays out of the shell's history")],
               secret: Annotated[bool, typer.Option(
                   "--secret", help="Store it as a secret (0600, never printed)")] = False,
               home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Set a variable the app's manifest declares (its next start gets it)."""
    from .appconfig import AppConfig

    root = home_of(home)
    name, eq, value = assignment.partition("=")
    if not eq or (secret and value == "-"):
        if not secret:
            raise fail("give NAME=VALUE (or --secret NAME to read the value from stdin)")
        value = sys.stdin.readline().rstrip("\n")
    manifest = _manifest(root, app_id)
    with errors_exit_2():
        row = AppConfig(root).set(manifest, name, value, secret)
    emit(row, as_json, lambda: out.print(
        f"{app_id}: {name} set{' (secret)' if row['secret'] else ''}; it applies from the "
        f"app's next start", markup=False))


@config_app.command("get")
def config_get(app_id: str, name: str, home: HomeOpt = None,
               as_json: JsonOpt = False) -> None:
    """One variable: its value (a secret's is never shown), or its default."""
    from .appconfig import AppConfig

    root = home_of(home)
    manifest = _manifest(root, app_id)
    with errors_exit_2():
        row = AppConfig(root).get(manifest, name)
    emit(row, as_json, lambda: out.print(f"{name}={_shown(row)}", markup=False))


@config_app.command("list")
def config_list(app_id: str, home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Every variable the app declares: set or not, value (never a secret's), description."""
    from rich.table import Table

    from .appconfig import AppConfig

    root = home_of(home)
    manifest = _manifest(root, app_id)
    with errors_exit_2():
        rows = AppConfig(root).entries(manifest)

    def table() -> None:
        t = Table("name", "value", "source", "description")
        for r in rows:
            t.add_row(r["name"], _shown(r), r["source"], r["description"])
        out.print(t)

    emit(rows, as_json, table)


@config_app.command("unset")
def config_unset(app_id: str, name: str, home: HomeOpt = None,
                 as_json: JsonOpt = False) -> None:
    """Forget a stored value (the manifest's default applies again)."""
    from .appconfig import AppConfig

    root = home_of(home)
    with errors_exit_2():
        found = AppConfig(root).unset(app_id, name)
    emit({"appId": app_id, "name": name, "unset": found}, as_json, lambda: out.print(
        f"{app_id}: {name} {'unset' if found else 'was not set'}", markup=False))


def mount(app: typer.Typer) -> None:
    app.command("rollback")(rollback)
    app.add_typer(config_app, name="config")
