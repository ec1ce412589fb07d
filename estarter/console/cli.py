"""``estarter console``: serve the web console in the foreground."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

HomeOpt = Annotated[Path | None, typer.Option("--home", envvar="ESTARTER_HOME",
                                              help="State folder (default: user data)")]
HostOpt = Annotated[str, typer.Option(
    "--host", help="Address to listen on (127.0.0.1; another address exposes the console)")]
PortOpt = Annotated[int | None, typer.Option(
    "--port", help="Port (default 8470, or a free one if it is taken)")]


def console(host: HostOpt = "127.0.0.1", port: PortOpt = None, home: HomeOpt = None) -> None:
    """Serve the web console for the runtime that is up (token: $ESTARTER_HOME/run/operator-token)."""  # noqa: E501
    from ..cli_apps import errors_exit_2, home_of
    from .service import serve

    root = home_of(home)

    def ready(url: str) -> None:
        print(f"estarter console at {url} (log in with {root}/run/operator-token)",
              flush=True)

    with errors_exit_2():
        serve(root, host, port, on_ready=ready)


def mount(app: typer.Typer) -> None:
    app.command("console")(console)
