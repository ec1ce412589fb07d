"""CLI commands for installed apps and the persistent runtime.

``install uninstall list doctor`` (and ``inspect`` of an app at rest) work on
``$ESTARTER_HOME`` whether or not a runtime is up; ``start stop restart ps`` talk
to the runtime ``estarter up`` started (exit 2 with one line if none is), over the
kernel's socket with the operator token (``operator_of``: no Ray driver, no Ray
import), else through ``Runtime.connect``; ``logs`` reads the app's log file.
``mount(app)`` adds them to the main CLI.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from .errors import EstarterError, NotFound
from .hosting.applog import one_line

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

HomeOpt = Annotated[Path | None, typer.Option("--home", envvar="ESTARTER_HOME",
                                              help="State folder (default: user data)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON")]
GrantOpt = Annotated[list[str] | None, typer.Option("--grant", help="Grant a permission")]
GrantAllOpt = Annotated[bool, typer.Option("--grant-all",
                                           help="Grant every requested permission")]
GraceOpt = Annotated[float, typer.Option("--grace", help="Seconds an app has to exit")]


def fail(message: str, code: int = 2) -> typer.Exit:
    """One clear line on stderr; the caller raises the returned Exit."""
    err.print(f"estarter: error: {message}", markup=False)
    return typer.Exit(code)


def home_of(home: Path | None) -> Path:
    from .paths import default_home

    root = home.expanduser().resolve() if home is not None else default_home()
    root.mkdir(parents=True, exist_ok=True)
    return root


def checked_grants(grants: list[str] | None) -> list[str]:
    """``--grant`` names (permissions, bundles, the original's aliases), checked before
    anything starts: an unknown one exits 2 with one line."""
    from . import devices
    from . import permissions as names

    named: set[str] = set()
    for name in grants or []:
        try:
            named |= names.normalize(name)
        except ValueError as exc:
            raise fail(f"--grant: {exc}; known: {' '.join(names.ALL)}, and the bundles "
                       f"{' '.join(names.BUNDLES)}") from None
    refused = devices.refusals(named)
    if refused:
        raise fail(f"--grant: {'; '.join(refused.values())}")
    return list(grants or [])


@contextmanager
def errors_exit_2() -> Iterator[None]:
    """An EstarterError (bad input, no runtime up, unknown app) exits 2 with one line."""
    try:
        yield
    except EstarterError as exc:
        raise fail(str(exc)) from None


def emit(data: Any, as_json: bool, human: Callable[[], None]) -> None:
    if as_json:
        out.print(json.dumps(data, default=str), markup=False)
    else:
        human()


@contextmanager
def connected(home: Path | None) -> Iterator[Any]:
    """The persistent runtime of ``home``, disconnected after."""
    from .runtime import Runtime

    with errors_exit_2():
        rt = Runtime.connect(home_of(home))
    try:
        with errors_exit_2():
            yield rt
    finally:
        rt.shutdown()


class RuntimeOperator:
    """The operator methods over ``Runtime`` (a Ray driver): the fallback of
    ``operator_of``, with OperatorClient's methods."""

    def __init__(self, rt: Any) -> None:
        self.rt = rt

    def ps(self) -> list[dict[str, Any]]:
        return list(self.rt.kernel.ps())

    def info(self, app_id: str) -> dict[str, Any]:
        return dict(self.rt.info(app_id))

    def logs(self, app_id: str, lines: int = 100) -> dict[str, Any]:
        return dict(self.rt.kernel.app_log(app_id, lines))

    def start(self, ref: str, grants: list[str] | None = None, grant_all: bool = False,
              node: str | None = None) -> dict[str, Any]:
        return dict(self.rt.launch(ref, grants=grants, grant_all=grant_all, node=node).record)

    def stop(self, app_id: str, grace: float = 5.0) -> dict[str, Any]:
        return dict(self.rt.kernel.stop(app_id, grace))

    def restart(self, app_id: str, grace: float = 5.0) -> dict[str, Any]:
        return dict(self.rt.restart(app_id, grace).record)


@contextmanager
def operator_of(home: Path | None) -> Iterator[Any]:
    """The runtime of ``home`` for an operator command: over the kernel's socket
    (``estarter.operator_client``, a few ms) when it answers with the operator token,
    else through a Ray driver (``connected``: 1-2 s). Both offer ``ps info start stop
    restart``; an EstarterError exits 2 with one line."""
    from .operator_client import reach

    root = home_of(home)
    client = reach(root)
    if client is not None:
        try:
            with errors_exit_2():
                yield client
        finally:
            client.close()
        return
    with connected(root) as rt:
        yield RuntimeOperator(rt)


# -- packages ------------------------------------------------------------------


def install(source: Annotated[Path, typer.Argument(help="App folder, .app.zip or .eapp")],
            grant: GrantOpt = None, grant_all: GrantAllOpt = False, home: HomeOpt = None,
            as_json: JsonOpt = False,
            defer: Annotated[bool, typer.Option(
                "--no-restart", "--defer",
                help="Do not restart a running app: the new version runs from its next "
                     "start")] = False,
            grace: GraceOpt = 5.0) -> None:
    """Install (or upgrade) an app: validated whole before anything lands. An upgrade
    keeps the version it replaces (``estarter rollback``) and restarts the app on the
    new version if a runtime that is up runs it."""
    from .apps import install as do_install
    from .cli_versions import after_install, say_restarted

    grants = checked_grants(grant)
    root = home_of(home)
    with errors_exit_2(), err.status(f"installing {source.name}", spinner="dots"):
        row = do_install(root, source, grants, grant_all)
    row = after_install(root, row, defer, grace)

    def human() -> None:
        out.print(f"installed {row['appId']} {row['version']}; granted: "
                  f"{' '.join(row['granted']) or '-'}", markup=False)
        say_ungranted(row)
        say_restarted(row, defer)

    emit(row, as_json, human)


def say_ungranted(report: dict[str, Any]) -> None:
    """Requested but not granted, and the exact command that grants them (stderr)."""
    if report.get("ungranted"):
        line = f"not granted (requested by its manifest): {' '.join(report['ungranted'])}"
        if report.get("grantCommand"):
            line += f"\n  grant with: {report['grantCommand']}"
        for reason in (report.get("refused") or {}).values():
            line += f"\n  {reason}"
        err.print(line, markup=False)


def uninstall(app_id: str, keep_data: Annotated[bool, typer.Option(
        "--keep-data", help="Keep the app's data, grants and record")] = False,
              home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Remove an installed app (stopping it first if a runtime runs it)."""
    from .apps import uninstall as do_uninstall
    from .daemon import read_runtime

    root = home_of(home)
    if read_runtime(root) is not None:
        try:
            with operator_of(root) as op:
                op.stop(app_id, 2.0)
        except (typer.Exit, NotFound):
            pass  # not up, or the app is not running there
    with errors_exit_2():
        do_uninstall(root, app_id, keep_data)
    emit({"appId": app_id, "uninstalled": True, "keptData": keep_data}, as_json,
         lambda: out.print(f"uninstalled {app_id}", markup=False))


def list_apps(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Installed apps and their last known state."""
    from .apps import list_installed

    with errors_exit_2():
        rows = list_installed(home_of(home))

    def table() -> None:
        t = Table("id", "version", "runtime", "restart", "state", "name")
        for r in rows:
            t.add_row(r["appId"], r["version"], r["runtime"], r["restart"], r["state"],
                      r["name"])
        out.print(t)

    emit(rows, as_json, table)


NodeOpt = Annotated[str | None, typer.Option(
    "--node", help="Run on this Ray node (node id, unique id prefix or address)")]


# -- the running runtime -------------------------------------------------------


def start(app: Annotated[str, typer.Argument(help="Installed id, folder or package")],
          grant: GrantOpt = None, grant_all: GrantAllOpt = False, home: HomeOpt = None,
          as_json: JsonOpt = False, node: NodeOpt = None) -> None:
    """Start an app on the runtime that is up."""
    grants = checked_grants(grant)
    with operator_of(home) as op:
        rec = op.start(app, grants, grant_all, node)
    emit(rec, as_json, lambda: out.print(f"{rec['appId']}: {rec['state']}", markup=False))


def stop(app_id: str, grace: GraceOpt = 5.0, home: HomeOpt = None,
         as_json: JsonOpt = False) -> None:
    """Stop a running app (ask, wait --grace, kill); it is not restarted."""
    with operator_of(home) as op:
        rec = op.stop(app_id, grace)
    emit(rec, as_json, lambda: out.print(f"{app_id}: {rec['state']}", markup=False))


def restart(app_id: str, grace: GraceOpt = 5.0, home: HomeOpt = None,
            as_json: JsonOpt = False) -> None:
    """Stop an app if it runs, then start it again."""
    with operator_of(home) as op:
        rec = op.restart(app_id, grace)
    emit(rec, as_json, lambda: out.print(f"{app_id}: {rec['state']}", markup=False))


def ps(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Apps of the runtime that is up: state (``restarting`` while in restart backoff),
    pid of the process that runs now, node, restarts, uptime, CPU, memory, last exit.
    What is not known is left blank."""
    with operator_of(home) as op:
        rows = op.ps()

    def table() -> None:
        t = Table("id", "state", "pid", "node", "run", "restarts", "started", "uptime",
                  "cpu", "memory", "exit")
        for r in rows:
            started = (datetime.fromtimestamp(r["startedAt"]).strftime("%H:%M:%S")
                       if r.get("startedAt") else "")
            ex = r.get("exit") or {}
            t.add_row(r["appId"], r["state"], _shown(r.get("pid")), r.get("node") or "",
                      _shown(r.get("runId")), _shown(r.get("restarts")), started,
                      _duration(r.get("uptime")), _cpu(r.get("cpuSeconds")),
                      _memory(r.get("memoryBytes")),
                      f"{ex.get('reason')} ({ex.get('code')})" if ex else "")
        out.print(t)

    emit(rows, as_json, table)


def _shown(value: Any) -> str:
    return "" if value is None else str(value)


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return ""
    s = int(seconds)
    if s < 3600:
        return f"{s // 60}:{s % 60:02d}"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600}h"


def _cpu(seconds: Any) -> str:
    return f"{seconds:.1f}s" if isinstance(seconds, (int, float)) else ""


def _memory(size: Any) -> str:
    if not isinstance(size, (int, float)):
        return ""
    return f"{size / (1024 * 1024):.1f}M"


def inspect(app_id: str, home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Running: what was applied (limits, sandbox); at rest: manifest, grants, last exit."""
    from .apps import describe
    from .daemon import read_runtime

    root = home_of(home)
    data: dict[str, Any] | None = None
    if read_runtime(root) is not None:
        try:
            with operator_of(root) as op:
                info = op.info(app_id)
            if info.get("host"):
                data = info
        except (typer.Exit, NotFound):
            data = None
    if data is None:
        with errors_exit_2():
            data = describe(root, app_id)
    shown = data
    emit(shown, as_json, lambda: out.print_json(json.dumps(shown, default=str)))


def printable(text: Any) -> str:
    """App text for a terminal: control characters and escape sequences escaped
    (the log file holds them escaped already; this also covers older files)."""
    return one_line(text, 1 << 20)


def logs(app_id: Annotated[str | None, typer.Argument(
             help="The app; none (or --all): every app's log, merged in time order")] = None,
         follow: Annotated[bool, typer.Option("-f", "--follow",
                                              help="Keep printing new lines")] = False,
         lines: Annotated[int | None, typer.Option(
             "-n", "--lines", help="Lines to show (default 100; all of --since)")] = None,
         since: Annotated[str | None, typer.Option(
             "--since", help="Only lines since a duration ago (10m, 2h, 1d) or a time "
                             "(2026-11-29T10:00)")] = None,
         all_apps: Annotated[bool, typer.Option("--all", help="Every app's log")] = False,
         home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """An app's log, or every app's: stdout, stderr, log calls and the runtime's lines
    (run start and end, drops), each tagged with its stream; -f follows it. A running
    app's log is read on its node through the runtime; else (or with no runtime up)
    the log files here."""
    from . import logs as applogs
    from .paths import log_file

    root = home_of(home)
    if app_id is not None and all_apps:
        raise fail("give an app or --all, not both")
    try:
        cutoff = applogs.parse_since(since) if since is not None else None
    except ValueError as exc:
        raise fail(str(exc)) from None
    count = lines if lines is not None else (None if cutoff is not None else 100)
    combined = app_id is None

    def show(line: applogs.LogLine) -> None:
        if as_json:
            out.print(json.dumps(line.to_json()), markup=False)
        else:
            text = printable(line.raw)
            out.print(f"{line.app} | {text}" if combined else text, markup=False)

    # A running app's log is read by its supervisor, on whatever node it runs (the
    # files here are that node's only with shared storage): DESIGN, "One view".
    if app_id is not None and _show_supervisor_log(root, app_id, count, cutoff, follow, show):
        return
    if app_id is not None:
        if not log_file(root, app_id).exists() and not follow:
            raise fail(f"no log for {app_id} (has it run?)")
        apps: Callable[[], list[str]] = lambda: [app_id]  # noqa: E731 - one app, fixed
    else:
        apps = lambda: applogs.logged_apps(root)  # noqa: E731 - re-read while following

    for line in applogs.read(root, apps(), cutoff, count):
        show(line)
    if not follow:
        return
    stopped = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stopped.set())
    try:
        for line in applogs.follow(root, apps, stopped.is_set):
            show(line)
    finally:
        signal.signal(signal.SIGINT, previous)


def _show_supervisor_log(root: Path, app_id: str, count: int | None, cutoff: float | None,
                         follow: bool, show: Callable[[Any], None]) -> bool:
    """Show the log of a running app as its supervisor reads it on its node (and with
    ``follow``, poll it for new lines until Ctrl-C or the app ends), or of a run that
    ended on another node, read there, over the kernel socket (no Ray driver). False,
    showing nothing, when the socket does not answer or the log is this node's file:
    the files then. That node gone: one line saying so, exit 2."""
    from . import logs as applogs
    from .operator_client import reach

    op = reach(root)
    if op is None:
        return False
    want = min(count if count is not None else LOG_TAIL_MAX, LOG_TAIL_MAX)
    shown = False
    try:
        got = op.logs(app_id, want)
        if got.get("source") == "lost":  # the last run's node is gone: say so, not the
            raise fail(str(got.get("note")))  # file here, another one under its name
        if got.get("source") not in ("supervisor", "node"):  # "node": an ended run's
            return False
        seen = list(got["lines"])
        for raw in seen:
            line = applogs.parse(raw, app_id)
            if cutoff is None or (line.time is not None and line.time >= cutoff):
                show(line)
        shown = True
        stopped = threading.Event()
        previous = signal.signal(signal.SIGINT, lambda *_: stopped.set()) if follow else None
        try:
            while follow and not stopped.wait(LOG_POLL_SECONDS):
                got = op.logs(app_id, LOG_FOLLOW_LINES)
                fresh = _after(seen, list(got["lines"]))
                for raw in fresh:
                    show(applogs.parse(raw, app_id))
                seen = (seen + fresh)[-LOG_FOLLOW_LINES:]
                if got.get("source") != "supervisor":
                    break  # the app ended: its last lines are shown
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
    except EstarterError as exc:
        if shown:  # the socket failed while following
            raise fail(f"following {app_id}: {exc.message}") from None
        return False
    finally:
        op.close()
    return True


LOG_TAIL_MAX = 10_000  # operator_access.MAX_LOG_LINES
LOG_POLL_SECONDS = 0.5
LOG_FOLLOW_LINES = 1000  # more than half a second of any app's lines (capped rates)


def _after(seen: list[str], tail: list[str]) -> list[str]:
    """The lines of ``tail`` (a newer tail of the same log) after those of ``seen``:
    where all of ``seen`` ends in it (the first such place: a repeated line is shown
    again rather than a new one dropped), else where it starts inside ``seen``."""
    if not seen:
        return tail
    n = len(seen)
    for j in range(n - 1, len(tail)):  # all of seen within tail, ending at j
        if tail[j] == seen[-1] and tail[j + 1 - n:j + 1] == seen:
            return tail[j + 1:]
    for j in range(min(n, len(tail)) - 1, -1, -1):  # tail starts inside seen
        if tail[j] == seen[-1] and tail[:j + 1] == seen[-(j + 1):]:
            return tail[j + 1:]
    return tail


# -- the persistent runtime ----------------------------------------------------


def up(address: Annotated[str | None, typer.Option(
        "--address", help="Join this Ray cluster instead of starting a head")] = None,
       strict: Annotated[bool, typer.Option(
           "--strict", help="Refuse to run apps whose limits cannot be applied")] = False,
       home: HomeOpt = None, as_json: JsonOpt = False,
       console: Annotated[bool, typer.Option(
           "--console/--no-console", help="Serve the web console beside the runtime")] = True,
       console_host: Annotated[str, typer.Option(
           "--console-host", "--host",
           help="Address the console listens on (127.0.0.1; another one exposes it)")
       ] = "127.0.0.1",
       console_port: Annotated[int | None, typer.Option(
           "--console-port", "--port", help="Console port (default 8470, else a free one)")
       ] = None) -> None:
    """Start the persistent runtime (a Ray head of its own, or --address) and return."""
    from .cli_service import delegated
    from .console import service as console_service
    from .daemon import up as do_up

    root = home_of(home)
    if delegated(root, "up", as_json):  # this home's systemd unit is installed
        return
    with errors_exit_2(), err.status("starting the runtime", spinner="dots"):
        try:
            info = do_up(root, address, strict)
        except ValueError as exc:  # a bad ESTARTER_RESTART_* value
            raise EstarterError(str(exc)) from None
    token = console_service.ensure_token(root)  # the operator's, 0600: console and scripts
    if console:
        with err.status("starting the console", spinner="dots"):
            try:
                info["console"] = {"url": console_service.start(
                    root, console_host, console_port)["url"], "token": str(token)}
            except EstarterError as exc:
                info["console"] = {"url": None, "error": str(exc)}

    def human() -> None:
        rec = info.get("recovery") or {}
        stale = info.get("stale")
        if stale:
            left = (f"stopped {stale['processes']} process(es) it left, "
                    if stale["processes"] else "")
            out.print(f"the runtime recorded for this home at {stale['address']} did not "
                      f"answer (its head is gone): {left}starting a new one", markup=False)
        out.print(f"estarter runtime {info['status']} at {info['address']} "
                  f"(home {root})", markup=False)
        if rec.get("adopted") or rec.get("lost"):
            out.print(f"recovered: adopted {rec['adopted']}, lost {rec['lost']}, "
                      f"relaunched {rec['relaunched']}", markup=False)
        shown = info.get("console") or {}
        if shown.get("url"):
            out.print(f"console: {shown['url']} (log in with the token in {shown['token']})",
                      markup=False)
        elif shown:
            err.print(f"estarter: the console did not start: {shown['error']}", markup=False)

    emit(info, as_json, human)


def down(grace: GraceOpt = 5.0, home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Stop what up started: apps (back on the next up per policy), kernel, Ray head."""
    from .cli_service import delegated
    from .daemon import down as do_down

    root = home_of(home)
    if delegated(root, "down", as_json):  # this home's systemd unit is installed
        return
    with errors_exit_2(), err.status("stopping the runtime", spinner="dots"):
        result = do_down(root, grace)
    emit(result, as_json, lambda: out.print(
        "stopped" if result["stopped"] else "no runtime was up", markup=False))


def doctor(as_json: JsonOpt = False, home: HomeOpt = None) -> None:
    """What this host can enforce, one line per capability; whether a runtime is up."""
    from .daemon import reachable, read_runtime
    from .hosting.limits import host_capabilities
    from .operator_client import reach

    caps = host_capabilities()
    root = home_of(home)
    info = read_runtime(root)
    # The kernel's operator socket answers in ms; a Ray driver (the fallback) in 1-2 s.
    client = reach(root) if info is not None else None
    runtime: dict[str, Any] = {
        "up": client is not None or bool(info and reachable(info.address)),
        "address": info.address if info else None, "actors": []}
    if client is not None:
        try:
            with errors_exit_2():
                runtime["actors"] = client.actors()
        finally:
            client.close()
    elif runtime["up"]:
        with connected(home) as rt:
            runtime["actors"] = rt.actors()
    data = {"capabilities": caps, "runtime": runtime}

    def human() -> None:
        for cap in caps:
            mark = "ok" if cap["ok"] else "no"
            out.print(f"{mark:3} {cap['name']}: {cap['detail']}", markup=False)
        out.print(f"runtime: {'up at ' + str(runtime['address']) if runtime['up'] else 'not up'}",
                  markup=False)
        for line in actor_lines(runtime["actors"]):
            out.print(line, markup=False)

    emit(data, as_json, human)


def actor_lines(actors: list[dict[str, Any]]) -> list[str]:
    """``doctor``'s lines for the runtime's actors, and a warning when Ray runs them
    below normal priority (a Ray started without estarter's system config)."""
    lines = []
    for actor in actors:
        what = f" ({actor['appId']})" if actor.get("appId") else ""
        state = "" if actor.get("alive") else f" DOWN: {actor.get('error', '')}"
        nice = f" nice {actor['nice']}" if actor.get("nice") is not None else ""
        lines.append(f"  {actor['role']:12} {actor['name']}{what} node {actor.get('node')} "
                     f"pid {actor.get('pid')}{nice}{state}")
        if actor.get("storage"):  # the kernel's: where zones are mounted (storage.py)
            lines.append(f"  storage: zone mounts {actor['storage']['directMounts']}")
    worst = max((a.get("nice") or 0 for a in actors), default=0)
    if worst > 0:
        lines.append(f"warning: Ray runs estarter's workers at nice {worst}: beside other "
                     "load the kernel, supervisors and apps get little CPU; start Ray's head "
                     "with --system-config '{\"worker_niceness\":0}' (up and cluster.yaml do)")
    return lines


def mount(app: typer.Typer) -> None:
    for fn, name in ((install, "install"), (uninstall, "uninstall"), (list_apps, "list"),
                     (start, "start"), (stop, "stop"), (restart, "restart"), (ps, "ps"),
                     (logs, "logs"), (inspect, "inspect"), (up, "up"), (down, "down"),
                     (doctor, "doctor")):
        app.command(name)(fn)
