"""Installed apps as the operator sees them: install with grants, uninstall, list, logs.

Files only (the store, SQLite, log files): these work with or without a runtime up,
from the CLI and from ``Runtime``. A running kernel sees the grants made here on
the app's next call (the permission manager watches SQLite's data_version).
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from . import devices, pydeps
from .appconfig import AppConfig
from .errors import EstarterError, NotSupported
from .hosting import dotnet_app
from .kernel.permissions import PermissionManager
from .manifest import AppManifest, RuntimeKind, parse_manifest
from .paths import kernel_db, log_file, state_db
from .state import AppRecords
from .store import AppStore


def install(home: Path, source: Path, grants: list[str], grant_all: bool,
            on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Install or upgrade; register what the app requests; apply grants. The app is
    installed whole or not at all (see AppStore); grants name permissions only."""
    from . import permissions as names

    named: set[str] = set()
    for name in grants:
        try:
            named |= names.normalize(name)
        except ValueError as exc:
            raise EstarterError(str(exc)) from None
    cannot = devices.refusals(named)
    if cannot:  # before anything lands, as the grant itself would refuse
        raise NotSupported("; ".join(cannot.values()), {"refused": cannot})
    if _source_runtime(source) is RuntimeKind.DOTNET:
        dotnet_app.require()  # refused before anything lands
    # Before anything lands: bad requirements or a failed pip refuse the install.
    pydeps.ensure(home, pydeps.read_source(source))
    manifest = AppStore(home, on_step=on_step).install(source)
    pm = PermissionManager(state_db(home))
    grantable, refused = devices.split(manifest.requested_permissions)
    try:
        pm.register(manifest.id, manifest.requested_permissions)
        if grant_all:  # all but the device permissions this host has no device for
            pm.grant(manifest.id, grantable, by="install")
        elif grants:
            pm.grant(manifest.id, grants, by="install")
        granted = sorted(pm.granted(manifest.id))
    finally:
        pm.close()
    return {**_row(manifest), "granted": granted,
            **names.ungranted_report(manifest.id, manifest.requested_permissions, granted,
                                     refused)}


def _source_runtime(source: Path) -> RuntimeKind | None:
    """The runtime an app folder or package asks for, read before it is installed;
    None when it cannot be read (the store's own checks then say why)."""
    import zipfile

    from .manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES

    try:
        if source.is_dir():
            raw = (source / MANIFEST_NAME).read_bytes()[:MAX_MANIFEST_BYTES + 1]
        else:
            with zipfile.ZipFile(source) as zf:
                info = zf.getinfo(MANIFEST_NAME)
                if info.file_size > MAX_MANIFEST_BYTES:
                    return None
                raw = zf.read(info)
        return parse_manifest(raw).runtime
    except (OSError, KeyError, zipfile.BadZipFile, EstarterError):
        return None


def uninstall(home: Path, app_id: str, keep_data: bool = False) -> None:
    """Remove the app and, unless ``keep_data``, its data, grants and record."""
    AppStore(home).uninstall(app_id, keep_data=keep_data)
    if keep_data:
        return
    AppConfig(home).forget(app_id)
    pm = PermissionManager(state_db(home))
    try:
        pm.forget(app_id)
    finally:
        pm.close()
    records = AppRecords(kernel_db(home))
    try:
        records.forget(app_id)
    finally:
        records.close()


def rollback(home: Path, app_id: str) -> dict[str, Any]:
    """Put the previous version of an installed app back (the one it replaced becomes
    the previous: a second rollback goes forward again) and register what that
    version requests. Files only; a running app is restarted by the caller."""
    back, replaced = AppStore(home).rollback(app_id)
    pm = PermissionManager(state_db(home))
    try:
        pm.register(back.id, back.requested_permissions)
        granted = sorted(pm.granted(back.id))
    finally:
        pm.close()
    return {**_row(back), "from": replaced.version, "granted": granted}


def list_installed(home: Path) -> list[dict[str, Any]]:
    """Installed apps, with their last known state from the app records."""
    records = AppRecords(kernel_db(home))
    try:
        rows = {r.app_id: r for r in records.all()}
    finally:
        records.close()
    out = []
    for manifest in AppStore(home).list():
        row = rows.get(manifest.id)
        out.append({**_row(manifest), "state": row.state if row else "installed",
                    "exit": row.exit if row else None})
    return out


def describe(home: Path, app_id: str) -> dict[str, Any]:
    """An installed app at rest: manifest, grants and its last exit (``inspect``)."""
    manifest, folder = AppStore(home).get(app_id)
    pm = PermissionManager(state_db(home))
    try:
        grants = {"requested": sorted(pm.requested(app_id)),
                  "granted": sorted(pm.granted(app_id))}
    finally:
        pm.close()
    records = AppRecords(kernel_db(home))
    try:
        row = records.get(app_id)
    finally:
        records.close()
    return {"appId": app_id, "installed": str(folder), "manifest": manifest.to_json(),
            "permissions": grants, "record": row.to_json() if row else None,
            "config": AppConfig(home).entries(manifest),  # a secret's value never
            "state": row.state if row else "installed",
            "exit": row.exit if row else None}


def tail(path: Path, lines: int = 100) -> list[str]:
    """The last ``lines`` lines of a log file ([] if there is none yet)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return [line.rstrip("\n") for line in collections.deque(fh, maxlen=max(0, lines))]
    except FileNotFoundError:
        return []


def follow(path: Path, stop: Callable[[], bool], poll: float = 0.2) -> Iterator[str]:
    """New lines of a log file as they are written, across rotations (the file is
    renamed to ``.1`` and a new one started: a new inode), until ``stop()``."""
    fh = None
    inode = None
    try:
        while not stop():
            if fh is None:
                try:
                    fh = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115
                    inode = os.fstat(fh.fileno()).st_ino
                    fh.seek(0, os.SEEK_END)
                except FileNotFoundError:
                    time.sleep(poll)
                    continue
            line = fh.readline()
            if line:
                yield line.rstrip("\n")
                continue
            try:
                rotated = os.stat(path).st_ino != inode
            except FileNotFoundError:
                rotated = True
            if rotated:  # read the rest of the old file, then start on the new one
                yield from (rest.rstrip("\n") for rest in fh.readlines())
                fh.close()
                fh = None
                if os.path.exists(path):
                    fh = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115
                    inode = os.fstat(fh.fileno()).st_ino
                continue
            time.sleep(poll)
    finally:
        if fh is not None:
            fh.close()


def logs_path(home: Path, app_id: str) -> Path:
    return log_file(home, app_id)


def _row(manifest: AppManifest) -> dict[str, Any]:
    return {"appId": manifest.id, "name": manifest.name, "version": manifest.version,
            "runtime": manifest.runtime.value, "restart": manifest.restart.value,
            "permissions": sorted(manifest.requested_permissions)}
