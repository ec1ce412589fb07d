"""``estarter init NAME --runtime python|native|wasm``: a new app folder (see scaffold)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from .cli_apps import fail, out
from .errors import EstarterError


class InitRuntime(str, Enum):
    python = "python"
    native = "native"
    wasm = "wasm"


def init(
    name: Annotated[Path, typer.Argument(
        help="The new folder (absent or empty); its name becomes the app id")],
    runtime: Annotated[InitRuntime, typer.Option(
        "--runtime", "-r", help="python, native (C, built with the system compiler) or "
                                "wasm (C, built for wasm32-wasi)")] = InitRuntime.python,
) -> None:
    """Make a new app folder: manifest, entry, README and a pytest test, ready to run."""
    from .scaffold import init_app

    try:
        folder = init_app(name, runtime.value)
    except EstarterError as exc:
        raise fail(str(exc)) from None
    out.print(f"created {folder} (runtime {runtime.value})", markup=False)
    out.print(f"  estarter run {name}    # run it", markup=False)
    out.print(f"  cd {name} && pytest    # test it", markup=False)


def mount(main: typer.Typer) -> None:
    main.command("init")(init)
