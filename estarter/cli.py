"""The ``estarter`` command. Parses, calls Runtime or the store, prints.

Bad input (a broken manifest, a hostile package, an unknown app) exits 2 with one
clear line on stderr; an app's own exit code is passed through by ``run``.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from . import cli_apps, cli_init, cli_kernel, cli_service, cli_versions
from .cli_apps import err, fail, home_of, out, printable
from .console import cli as console_cli
from .errors import EstarterError

app = typer.Typer(no_args_is_help=True,
                  help="Run sandboxed apps on Ray (or locally).",
                  pretty_exceptions_enable=False)
manifest_app = typer.Typer(no_args_is_help=True, help="Manifest tools.")
app.add_typer(manifest_app, name="manifest")

def exit_status(code: int | None) -> int:
    """An app's exit as a shell status: signals as 128+n, unknown as 1."""
    if code is None:
        return 1
    if code < 0:
        return 128 - code
    return min(code, 255)


def _version(value: bool) -> None:
    if value:
        from .version import API_VERSION, __version__

        out.print(f"estarter {__version__} (app API {API_VERSION[0]}.{API_VERSION[1]})",
                  markup=False)
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True,
        help="Print the version (and the app API it serves) and exit")] = False) -> None:
    """Run sandboxed apps on Ray (or locally)."""


HomeOpt = Annotated[Path | None, typer.Option("--home", envvar="ESTARTER_HOME",
                                              help="State folder (default: user data)")]


@app.command()
def run(
    path: Annotated[str, typer.Argument(help="App folder, .app.zip/.eapp, or installed id")],
    json_out: Annotated[bool, typer.Option("--json", help="One JSON event per line")] = False,
    local: Annotated[bool, typer.Option("--local", help="No Ray: run in this process")] = False,
    address: Annotated[str | None, typer.Option(envvar="ESTARTER_RAY_ADDRESS",
                                                help="Ray cluster to join")] = None,
    grant: Annotated[list[str] | None, typer.Option("--grant", help="Grant a permission")
                     ] = None,
    grant_all: Annotated[bool, typer.Option("--grant-all",
                                            help="Grant every requested permission")] = False,
    strict: Annotated[bool, typer.Option("--strict",
                                         help="Refuse to run if a limit cannot be applied")
                      ] = False,
    node: Annotated[str | None, typer.Option(
        "--node", help="Run on this Ray node (node id, unique id prefix or address)")] = None,
    watch: Annotated[bool, typer.Option(
        "--watch", help="Run again whenever a file of the app folder changes (after its "
                        "manifest's build command, if any), until Ctrl-C")] = False,
    home: HomeOpt = None,
) -> None:
    """Run an app in the foreground and exit with its exit code (on the runtime that is up, else an embedded one)."""  # noqa: E501
    if watch and not Path(path).is_dir():
        raise fail(f"--watch needs an app folder, not {path!r}")
    from .cli_consent import consent, terminal_ask
    from .daemon import reachable, read_runtime
    from .runtime import Runtime

    root = home_of(home)
    if not address and not watch:  # --watch: the build may not have made the entry yet
        _check_app(root, path)
    grants, report = consent(root, path, cli_apps.checked_grants(grant), grant_all,
                             terminal_ask(json_out))
    try:
        info = None if local or address else read_runtime(root)
        # The runtime that is up: over its operator socket (no Ray driver, 1-2 s less),
        # else as a Ray driver.
        rt: Any = _over_socket(root) if info is not None else None
        if rt is None and info is not None and reachable(info.address):
            with _progress(json_out, "joining the runtime that is up"):
                rt = Runtime.connect(root)
        elif rt is None:
            with _progress(json_out or local, f"joining Ray at {address}" if address
                           else "starting an embedded Ray"):
                rt = Runtime.start(local=local, address=address, home=root, strict=strict)
    except EstarterError as exc:
        raise fail(str(exc), 1) from None
    try:
        if watch:
            from .cli_consent import show_ungranted
            from .cli_watch import WatchLoop

            show_ungranted(report, json_out)
            raise typer.Exit(WatchLoop(
                rt, Path(path), json_out,
                lambda: rt.launch(path, grants=grants, grant_all=grant_all, node=node),
                _print_event, out, err).run())
        raise typer.Exit(_run_foreground(rt, path, json_out, grants, grant_all, node,
                                         report))
    finally:
        rt.shutdown()


def _over_socket(root: Path) -> Any:
    """``Runtime``'s part that ``run`` uses, over the kernel's operator socket, or None
    (then a Ray driver): ``operator_client.reach`` says when the socket cannot serve."""
    from .operator_client import OperatorRuntime, reach

    client = reach(root)
    return OperatorRuntime(client) if client is not None else None


def _check_app(root: Path, ref: str) -> None:
    """Refuse an app that cannot be found or read before any Ray starts: a typo
    answered in a second, not after the 5-10 s of an embedded Ray. (Joining a cluster
    by address, the kernel may resolve what this machine cannot: not checked here.)"""
    from .store import AppStore

    try:
        AppStore(root).resolve(ref)
    except EstarterError as exc:
        raise fail(str(exc)) from None


def _progress(quiet: bool, what: str) -> Any:
    """A spinner on stderr while Ray starts, on a terminal only (never with --json)."""
    import contextlib

    if quiet or not err.is_terminal:
        return contextlib.nullcontext()
    return err.status(f"{what}...")


def _run_foreground(rt: Any, path: str, json_out: bool, grants: list[str],
                    grant_all: bool, node: str | None = None,
                    ungranted: dict[str, Any] | None = None) -> int:
    from .cli_consent import show_ungranted

    cursor = rt.event_cursor()
    try:
        handle = rt.launch(path, grants=grants, grant_all=grant_all, node=node)
    except EstarterError as exc:
        raise fail(str(exc)) from None
    show_ungranted(ungranted, json_out)
    interrupted = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.set())
    try:
        while True:
            if interrupted.is_set():
                handle.stop(grace=3.0)
                interrupted.clear()
            batch = rt.events(cursor, 0.5, handle.app_id)
            cursor = batch["next"]
            for event in batch["events"]:
                _print_event(event, json_out)
                if event["event"] == "exit":
                    return exit_status(event.get("code"))
    finally:
        signal.signal(signal.SIGINT, previous)


def _print_event(event: dict[str, Any], json_out: bool) -> None:
    kind = event["event"]
    if json_out:
        shown = {k: v for k, v in event.items() if k not in ("seq",)}
        if kind in ("log", "notification", "exit"):
            out.print(json.dumps(shown), markup=False)
        return
    app_id = event.get("appId")
    if kind == "log":
        err.print(f"[{app_id}] {printable(event['message'])}", markup=False)
    elif kind == "notification":
        out.print(f"[bold]🔔 {escape(printable(event['title']))}[/bold]: "
                  f"{escape(printable(event['message']))}")
    elif kind == "exit":
        detail = f" ({printable(event['detail'])})" if event.get("detail") else ""
        err.print(f"[{app_id}] exited: {event['reason']}, code {event['code']}{detail}",
                  markup=False)


@app.command()
def pack(
    folder: Annotated[Path, typer.Argument(help="App folder with a manifest.json")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Zip path")] = None,
) -> None:
    """Write ID.app.zip for an app folder."""
    from .packaging import pack as do_pack

    try:
        written = do_pack(folder, output)
    except EstarterError as exc:
        raise fail(str(exc)) from None
    out.print(str(written), markup=False)


@manifest_app.command("schema")
def manifest_schema() -> None:
    """Print the JSON Schema of manifest.json."""
    from .manifest import manifest_schema as schema

    out.print(json.dumps(schema(), indent=2), markup=False)


@manifest_app.command("check")
def manifest_check(folder: Annotated[Path, typer.Argument(help="App folder")]) -> None:
    """Validate an app folder's manifest.json."""
    from .manifest import load_manifest

    try:
        manifest = load_manifest(folder)
    except EstarterError as exc:
        raise fail(_with_meaning(exc)) from None
    out.print(json.dumps(manifest.to_json(), indent=2), markup=False)


def _with_meaning(exc: EstarterError) -> str:
    """The error, followed by what the key it names means (the schema's words)."""
    from .manifest import describe_key

    key = exc.data.get("key") if isinstance(exc.data, dict) else None
    meaning = describe_key(key) if isinstance(key, str) else None
    return f"{exc}. {key}: {meaning}" if meaning else str(exc)


cli_apps.mount(app)
cli_init.mount(app)
cli_kernel.mount(app)
cli_service.mount(app)
cli_versions.mount(app)
console_cli.mount(app)


def main() -> None:
    try:
        app()
    except EstarterError as exc:  # anything a command did not turn into a clear line
        err.print(f"estarter: error: {exc}", markup=False)
        sys.exit(2)
