"""CLI commands over the kernel's state: ``permissions``, ``notifications``, ``token``.

They work on ``$ESTARTER_HOME`` directly (SQLite), with or without a runtime up. A
running kernel, in this process or another, or in a Ray actor, sees a grant or a
revocation on the app's next call: its permission checks read SQLite's
``data_version`` first. The main CLI adds these commands with ``mount(app)``;
``app`` here is the same commands as a standalone Typer (used by the tests).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from .hosting.applog import one_line
from .kernel.permissions import PermissionManager
from .kernel.tokens import TokenStore
from .kernel.ui import Notifications
from .paths import default_home, kernel_db, state_db

app = typer.Typer(help="Permissions, notifications and socket tokens.", no_args_is_help=True)
permissions_app = typer.Typer(help="What apps may do: list, grant, revoke, deny, audit.",
                              no_args_is_help=True)
app.add_typer(permissions_app, name="permissions")

HomeOpt = Annotated[Path | None, typer.Option("--home", help="ESTARTER_HOME to use")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]


def mount(main: typer.Typer) -> None:
    """Add ``permissions``, ``notifications`` and ``token`` to the main CLI."""
    main.add_typer(permissions_app, name="permissions")
    main.command("notifications")(notifications)
    main.command("token")(token)


def _home(home: Path | None) -> Path:
    return home.expanduser().resolve() if home is not None else default_home()


def _manager(home: Path | None) -> Any:
    """The permission authority: the runtime's permissions actor while a runtime is
    up for this home, else the files (SQLite) directly."""
    from .daemon import reachable, read_runtime

    root = _home(home)
    info = read_runtime(root)
    if info is not None and reachable(info.address):
        from .errors import EstarterError
        from .runtime import Runtime

        try:
            return _Connected(Runtime.connect(root))
        except EstarterError:
            pass  # recorded but not answering: the files are still the truth
    return PermissionManager(state_db(root))


class _Connected:
    """The permissions actor of the runtime that is up; ``close`` disconnects."""

    def __init__(self, runtime: Any) -> None:
        self._runtime = runtime
        self._authority = runtime.permission_authority()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._authority, name)

    def close(self) -> None:
        self._runtime.shutdown()


def _fail(message: str) -> typer.Exit:
    print(f"estarter: {message}", file=sys.stderr)
    return typer.Exit(2)


def _check_names(perms: list[str]) -> None:
    from . import permissions as names

    for name in perms:
        try:
            names.normalize(name)
        except ValueError as exc:
            raise _fail(str(exc)) from None


def _out(data: Any, as_json: bool, lines: list[str]) -> None:
    if as_json:
        print(json.dumps(data))
    else:
        for line in lines:
            print(one_line(line, 1 << 20))  # app text never reaches the terminal raw


@permissions_app.command("list")
def permissions_list(app_id: str, home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Requested, granted and pending permissions of APP."""
    pm = _manager(home)
    try:
        requested, granted = sorted(pm.requested(app_id)), sorted(pm.granted(app_id))
        pending = pm.pending(app_id)
        data = {"appId": app_id, "requested": requested, "granted": granted,
                "decisions": pm.grants(app_id), "pending": pending}
    finally:
        pm.close()
    lines = [f"requested: {' '.join(requested) or '-'}", f"granted:   {' '.join(granted) or '-'}"]
    lines += [f"pending:   {p['permission']} (#{p['id']}) {p['reason']}" for p in pending]
    _out(data, as_json, lines)


@permissions_app.command("grant")
def permissions_grant(app_id: str, names: list[str], home: HomeOpt = None,
                      as_json: JsonOpt = False) -> None:
    """Grant permissions (or bundles) to APP; persists; answers its open requests."""
    from .errors import EstarterError

    _check_names(names)
    pm = _manager(home)
    try:
        granted = sorted(pm.grant(app_id, names, by="cli"))
    except EstarterError as exc:  # a device this host does not have, a bad name
        raise _fail(str(exc)) from None
    finally:
        pm.close()
    missing = sorted(set(names) - set(granted) - {"basic", "standard", "full"})
    lines = [f"granted: {' '.join(granted) or '-'}"]
    if missing:
        lines.append(f"not requested by the app's manifest, so not held: {' '.join(missing)}")
    _out({"appId": app_id, "granted": granted}, as_json, lines)


@permissions_app.command("revoke")
def permissions_revoke(app_id: str, names: list[str], home: HomeOpt = None,
                       as_json: JsonOpt = False) -> None:
    """Revoke permissions from APP; a running app's next call is refused."""
    _check_names(names)
    pm = _manager(home)
    try:
        granted = sorted(pm.revoke(app_id, names, by="cli"))
    finally:
        pm.close()
    _out({"appId": app_id, "granted": granted}, as_json,
         [f"granted: {' '.join(granted) or '-'}"])


@permissions_app.command("deny")
def permissions_deny(app_id: str, names: Annotated[list[str] | None, typer.Argument()] = None,
                     home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Answer APP's open permission requests (for NAMES, or all) as denied."""
    if names:
        _check_names(names)
    pm = _manager(home)
    try:
        count = pm.deny(app_id, names or None, by="cli")
    finally:
        pm.close()
    _out({"appId": app_id, "denied": count}, as_json, [f"denied {count} open request(s)"])


@permissions_app.command("audit")
def permissions_audit(app_id: str, limit: int = 100, home: HomeOpt = None,
                      as_json: JsonOpt = False) -> None:
    """The newest decisions about APP (allowed, denied, granted, revoked)."""
    pm = _manager(home)
    try:
        rows = pm.audit(app_id, limit)
    finally:
        pm.close()
    lines = [f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(r['time']))} "
             f"{r['decision']:8} {r['permission']:16} {r['method']}" for r in rows]
    _out(rows, as_json, lines)


def notifications(limit: int = 50, app_id: Annotated[str | None, typer.Option("--app")] = None,
                  home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Notifications apps sent with ui.notify (kept across runs)."""
    store = Notifications(kernel_db(_home(home)))
    try:
        rows = store.list(limit, app_id)
    finally:
        store.close()
    lines = [f"{time.strftime('%H:%M:%S', time.localtime(r['time']))} [{r['level']}] "
             f"{r['appId']}: {r['title']}: {r['message']}" for r in rows]
    _out(rows, as_json, lines)


def token(app_id: str, home: HomeOpt = None) -> None:
    """Create a token for APP's socket connection and print it (the old one stops
    working). Use it as ESTARTER_TOKEN in a program started outside estarter."""
    from .errors import EstarterError
    from .store import AppStore

    root = _home(home)
    store = TokenStore(kernel_db(root))
    try:
        print(store.issue(app_id))
    finally:
        store.close()
    try:  # record what an installed app requests, so its grants apply at once
        manifest, _ = AppStore(root).get(app_id)
    except EstarterError:
        return
    pm = PermissionManager(state_db(root))
    try:
        if not pm.requested(app_id):
            pm.register(app_id, manifest.requested_permissions)
    finally:
        pm.close()


app.command("notifications")(notifications)
app.command("token")(token)
