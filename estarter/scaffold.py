"""``estarter init``: a new app folder that runs and tests as it is.

One folder per runtime: ``manifest.json`` (with ``$schema`` naming the
``manifest.schema.json`` written next to it, for editors), the entry (``app.py``;
``app.c`` built with the system C compiler for ``native``, or with clang for
wasm32-wasi for ``wasm``, from ``build.sh`` and the C helper of ``sdk/c`` copied
in), a README of three lines and ``test_app.py`` for the pytest plugin
(``estarter_runtime``). The folder is made in a staging folder next to the target
and renamed into place, so a failed build leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import sdk

from .errors import EstarterError, InvalidParams
from .manifest import AppManifest, RuntimeKind, manifest_schema

RUNTIMES = ("python", "native", "wasm")
# The manifest's id rule (AppManifest.id): the folder's name becomes the app id.
_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
BUILD_TIMEOUT = 300.0
SDK_C = Path(sdk.__file__).resolve().parent / "c"  # the C helpers, copied into C apps


class InitError(EstarterError):
    """The folder cannot be made (it exists, a bad name, a build failed)."""

    code = InvalidParams.code


def check_name(name: str) -> str:
    """The app id a folder named ``name`` gets; InitError if it is not a valid id."""
    if not _ID.fullmatch(name):
        raise InitError(
            f"bad app name {name!r}: use 1 to 64 characters of a-z, 0-9, '.', '_' and "
            "'-', starting with a letter or digit (it becomes the app id)")
    return name


def init_app(folder: Path, runtime: str = "python") -> Path:
    """Make a new app folder at ``folder`` (absent or empty); return it, resolved."""
    if runtime not in RUNTIMES:
        raise InitError(f"unknown runtime {runtime!r}: use one of {', '.join(RUNTIMES)}")
    if Path(folder).name == "..":
        check_name("..")
    folder = Path(os.path.abspath(folder))  # "." is the current (empty) folder
    app_id = check_name(folder.name)
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise InitError(f"{folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()):
        raise InitError(f"{folder} exists and is not empty: init makes a new app folder")
    if not folder.parent.is_dir():
        raise InitError(f"{folder.parent} is not a folder")
    stage = Path(tempfile.mkdtemp(prefix=f".{app_id}.init-", dir=folder.parent))
    try:
        _write(stage, app_id, runtime)
        if runtime != "python":
            _build(stage)
        try:
            os.rename(stage, folder)  # replaces an empty folder; atomic
        except OSError as exc:
            raise InitError(f"{folder}: {exc.strerror}") from None
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return folder


def _write(folder: Path, app_id: str, runtime: str) -> None:
    entry = {"python": "app.py", "native": "app", "wasm": "app.wasm"}[runtime]
    manifest: dict[str, object] = {
        "$schema": "./manifest.schema.json",
        "id": app_id,
        "name": app_id,
        "version": "0.1.0",
        "description": f"A new estarter app (runtime {runtime}).",
        "runtime": RuntimeKind(runtime).value,
        "entry": entry,
        "permissions": ["ui.notification"],
        "memoryLimitMb": 256 if runtime == "python" else 64,
        "maxRuntimeSeconds": 60,
    }
    if runtime != "python" and "build" in AppManifest.model_fields:
        manifest["build"] = "sh build.sh"  # `run --watch` rebuilds with it
    files = {
        "manifest.json": json.dumps(manifest, indent=2) + "\n",
        "manifest.schema.json": json.dumps(manifest_schema(), indent=2) + "\n",
        "README.md": _readme(app_id, runtime),
        "test_app.py": TEST.replace("APP_ID", app_id),
    }
    if runtime == "python":
        files["app.py"] = PY_APP.replace("APP_ID", app_id)
    else:
        header = "estarter_native.h" if runtime == "native" else "estarter.h"
        files["app.c"] = C_APP.replace("APP_ID", app_id).replace("HEADER", header)
        files["build.sh"] = NATIVE_BUILD if runtime == "native" else WASM_BUILD
        helper = ["estarter_native.h", "estarter_native.c"] if runtime == "native" else [
            "estarter.h"]
        for name in helper:
            files[name] = (SDK_C / name).read_text()
    for name, text in files.items():
        (folder / name).write_text(text)
    if runtime != "python":
        (folder / "build.sh").chmod(0o755)
    folder.chmod(0o755)  # mkdtemp made it 0700


def _readme(app_id: str, runtime: str) -> str:
    build = "" if runtime == "python" else "; rebuild the entry from app.c with `./build.sh`"
    return (f"# {app_id}\n"
            f"An estarter app (runtime `{runtime}`) made by `estarter init`{build}.\n"
            "Run it with `estarter run .`, test it with `pytest`.\n")


def _build(folder: Path) -> None:
    try:
        proc = subprocess.run(["sh", "build.sh"], cwd=folder, capture_output=True, text=True,
                              timeout=BUILD_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise InitError(f"build.sh took more than {BUILD_TIMEOUT:.0f} s") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise InitError("build.sh failed (is a C compiler installed? `make setup` installs "
                        "clang and wasi-libc): " + " | ".join(tail))


PY_APP = '''"""APP_ID: pings the kernel, logs a line, shows a notification and exits 0."""

from sdk import EStarterClient


def main() -> int:
    with EStarterClient.connect() as client:
        pong = client.system.ping()
        client.log("info", f"APP_ID: ping answered: {pong['pong']}")
        client.ui.notify("APP_ID", "Hello from APP_ID!")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
'''

C_APP = '''/* APP_ID: pings the kernel, logs a line, shows a notification and exits 0. */
#include <stdio.h>
#include <string.h>

#include "HEADER"

int main(void) {
    char response[1024];
    int n = estarter_call("system.ping", NULL, response, sizeof response);
    if (n < 0 || strstr(response, "\\"pong\\":true") == NULL) {
        fprintf(stderr, "system.ping failed (%d)\\n", n);
        return 1;
    }
    estarter_log(ESTARTER_INFO, "APP_ID: ping answered");
    n = estarter_call("ui.notify",
                      "{\\"title\\":\\"APP_ID\\",\\"message\\":\\"Hello from APP_ID!\\"}",
                      response, sizeof response);
    if (n < 0 || strstr(response, "\\"result\\"") == NULL) {
        fprintf(stderr, "ui.notify failed (%d): %s\\n", n, n >= 0 ? response : "");
        return 1;
    }
    return 0;
}
'''

NATIVE_BUILD = '''#!/bin/sh
# Builds the native entry `app` from app.c and the estarter C helper (libc only).
set -eu
cd "$(dirname "$0")"
cc=${CC:-$(command -v cc || command -v clang || command -v gcc || echo cc)}
"$cc" -std=c11 -O2 -Wall -Wextra -o app.tmp app.c estarter_native.c
mv -f app.tmp app
'''

WASM_BUILD = '''#!/bin/sh
# Builds the wasm entry `app.wasm` from app.c with clang for wasm32-wasi (wasi-libc).
set -eu
cd "$(dirname "$0")"
clang --target=wasm32-wasi -O2 -Wall -Wl,--strip-all -o app.wasm.tmp app.c
mv -f app.wasm.tmp app.wasm
'''

TEST = '''"""Runs APP_ID in a fresh estarter runtime (the estarter pytest plugin's fixture)."""

from pathlib import Path

APP = Path(__file__).resolve().parent


def test_app_exits_0_and_notifies(estarter_runtime):
    handle = estarter_runtime.launch(APP)
    info = handle.wait(timeout=120)
    assert info is not None and info.code == 0, info
    notes = [n for n in estarter_runtime.notifications() if n["appId"] == "APP_ID"]
    assert [n["message"] for n in notes] == ["Hello from APP_ID!"]
'''
