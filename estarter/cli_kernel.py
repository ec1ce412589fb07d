"""CLI commands over the kernel's state: ``permissions``, ``notifications``, ``token``.

They work with or without a runtime up. With one up, ``permissions`` goes through
the kernel's authority over its operator socket (a Ray driver if the socket cannot
serve); without one, on ``$ESTARTER_HOME`` directly (SQLite). A running kernel, in
this process or another, or in a Ray actor, sees a grant or a revocation on the
app's next call: its permission checks read SQLite's ``data_version`` first. The
main CLI adds these commands with ``mount(app)``; ``app`` here is the same commands
as a standalone Typer (used by the tests).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from .errors import EstarterError
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
    """The permission authority: while a runtime is up for this home, the kernel's
    (over its operator socket, a few ms; else through a Ray driver, 1-2 s), else the
    files (SQLite) directly."""
    from .daemon import reachable, read_runtime
    from .operator_client import reach

    root = _home(home)
    client = reach(root)
    if client is not None:
        return _OverSocket(client)
    info = read_runtime(root)
    if info is not None and reachable(info.address):
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


class _OverSocket:
    """PermissionManager's methods that the commands below use, over the kernel's
    operator socket (``operator.permissions`` and the rest). Who a change is by is
    the kernel's to say: ``cli``, as for a change made in the files."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._seen: dict[str, dict[str, Any]] = {}

    def _view(self, app_id: str) -> dict[str, Any]:
        if app_id not in self._seen:  # one call answers all four questions
            self._seen[app_id] = self._client.permissions(app_id)
        return self._seen[app_id]

    def requested(self, app_id: str) -> frozenset[str]:
        return frozenset(self._view(app_id)["requested"])

    def granted(self, app_id: str) -> frozenset[str]:
        return frozenset(self._view(app_id)["granted"])

    def grants(self, app_id: str) -> dict[str, str]:
        return dict(self._view(app_id)["decisions"])

    def pending(self, app_id: str) -> list[dict[str, Any]]:
        return list(self._view(app_id)["pending"])

    def grant(self, app_id: str, perms: list[str], by: str = "cli") -> frozenset[str]:
        return frozenset(self._client.grant(app_id, perms))

    def revoke(self, app_id: str, perms: list[str], by: str = "cli") -> frozenset[str]:
        return frozenset(self._client.revoke(app_id, perms))

    def deny(self, app_id: str, perms: list[str] | None = None, by: str = "cli") -> int:
        return int(self._client.deny(app_id, perms))

    def audit(self, app_id: str, limit: int = 100) -> list[dict[str, Any]]:
        return list(self._client.audit(app_id, limit))

    def close(self) -> None:
        self._client.close()


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
    except EstarterError as exc:  # the runtime's kernel failed to answer
        raise _fail(str(exc)) from None
    finally:
        pm.close()
    lines = [f"requested: {' '.join(requested) or '-'}", f"granted:   {' '.join(granted) or '-'}"]
    lines += [f"pending:   {p['permission']} (#{p['id']}) {p['reason']}" for p in pending]
    _out(data, as_json, lines)


@permissions_app.command("grant")
def permissions_grant(app_id: str, names: list[str], home: HomeOpt = None,
                      as_json: JsonOpt = False) -> None:
    """Grant permissions (or bundles) to APP; persists; answers its open requests."""
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
    except EstarterError as exc:
        raise _fail(str(exc)) from None
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
    except EstarterError as exc:
        raise _fail(str(exc)) from None
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
    except EstarterError as exc:
        raise _fail(str(exc)) from None
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
