"""Installed apps under ``$ESTARTER_HOME``, crash-safe at every step.

Layout::

    home/apps/<id>/               an installed app (its manifest.json at the top)
    home/previous/<id>/           the version it replaced (``rollback`` swaps the two)
    home/staging/new.<token>/     an install being extracted or copied
    home/staging/old.<token>.<id> the previous version, set aside during an upgrade
    home/staging/del.<token>      something being deleted
    home/cache/packages/<sha256>/ a package run without installing, extracted once
    home/vfs/<zone>/<id>/         the app's data (owned by the VFS; removed on uninstall)

An install is published by one ``rename`` into ``apps/``, and an upgrade first
renames the old folder aside into ``staging/``. So after a ``kill -9`` at any moment
``apps/<id>`` is the old app, the new app or absent, never half of one; the next
:class:`AppStore` puts a set-aside old version back if the new one never arrived
and deletes everything else left in ``staging/``. A set-aside version whose
successor did arrive becomes ``previous/<id>`` (an upgrade keeps one previous
version; a rollback is the same three renames the other way). One ``flock``
serialises the processes that change the store; it dies with its holder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import Busy, EstarterError, NotFound, PackageError
from .manifest import AppManifest, load_manifest
from .packaging import (
    DEFAULT_LIMITS,
    PackageLimits,
    copy_folder,
    fsync_dir,
    is_package_path,
    open_source,
    safe_extract,
)

log = logging.getLogger(__name__)

_APP_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
# shared and system hold no per-app folders: a folder there named like an app id
# is shared data, and uninstalling an app must not delete it.
_SHARED_ZONES = frozenset({"shared", "system"})
_HASH_CHUNK = 1024 * 1024

# The points at which an install can be interrupted; ``on_step`` is called at each
# (tests kill the process there to prove the store recovers).
STEPS = ("extracted", "old-aside", "new-in", "done")


class AppStore:
    """The installed apps of one ``$ESTARTER_HOME``. Construction recovers interrupted work."""

    def __init__(
        self,
        home: Path,
        *,
        limits: PackageLimits = DEFAULT_LIMITS,
        lock_timeout: float = 60.0,
        on_step: Callable[[str], None] | None = None,
    ) -> None:
        self.home = Path(home)
        self.apps_dir = self.home / "apps"
        self.staging_dir = self.home / "staging"
        self.previous_dir = self.home / "previous"
        self.cache_dir = self.home / "cache" / "packages"
        self.vfs_dir = self.home / "vfs"
        self.limits = limits
        self._lock_timeout = lock_timeout
        self._on_step = on_step
        for folder in (self.apps_dir, self.staging_dir, self.cache_dir, self.previous_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.recover()

    # ------------------------------------------------------------------ queries

    def get(self, app_id: str) -> tuple[AppManifest, Path]:
        """The installed app's manifest and folder; raises NotFound."""
        if not _APP_ID.match(app_id):
            raise NotFound(f"{app_id!r} is not a valid app id", {"appId": app_id})
        folder = self.apps_dir / app_id
        if not folder.is_dir():
            raise NotFound(f"app {app_id!r} is not installed", {"appId": app_id})
        manifest = load_manifest(folder)
        if manifest.id != app_id:
            raise PackageError(f"{folder}: holds the manifest of {manifest.id!r}, not {app_id!r}")
        return manifest, folder

    def previous(self, app_id: str) -> AppManifest | None:
        """The manifest of the version kept for ``rollback``, or None."""
        folder = self.previous_dir / app_id
        if not _APP_ID.match(app_id) or not folder.is_dir():
            return None
        try:
            return load_manifest(folder)
        except EstarterError as exc:
            log.warning("previous version of %s is damaged: %s", app_id, exc)
            return None

    def list(self) -> list[AppManifest]:
        """Installed apps sorted by id; a damaged one is logged and skipped."""
        apps: list[AppManifest] = []
        for folder in sorted(self.apps_dir.iterdir()):
            try:
                apps.append(self.get(folder.name)[0])
            except EstarterError as exc:
                log.warning("skipping damaged installed app %s: %s", folder, exc)
        return apps

    def resolve(self, path_or_id: str | os.PathLike[str]) -> tuple[AppManifest, Path]:
        """An installed app id, an app folder (used in place) or a package (cached).

        A string that is a valid id of an installed app means that app (write
        ``./name`` for a folder of the same name); anything else is a path.
        """
        if isinstance(path_or_id, str) and _APP_ID.match(path_or_id) \
                and not is_package_path(path_or_id) and (self.apps_dir / path_or_id).is_dir():
            return self.get(path_or_id)
        path = Path(path_or_id)
        if path.is_dir():
            source = open_source(path)
            return source.manifest, source.root
        if path.is_file():
            return self._cached(path)
        raise NotFound(f"{os.fspath(path_or_id)!r} is neither an installed app nor an app "
                       "folder or package", {"path": os.fspath(path_or_id)})

    # ------------------------------------------------------------------ changes

    def install(self, source: str | os.PathLike[str]) -> AppManifest:
        """Install (or upgrade to) the app in a folder or package; all or nothing.

        Everything is validated while the copy is made in ``staging/``; only then is
        the installed folder swapped, by renames. Any installed version is replaced.
        """
        source = Path(source)
        if not source.exists():
            raise PackageError(f"{source}: no such app folder or package")
        with self._locked():
            try:
                return self._install_locked(source)
            except BaseException:
                # The same repair a later start would do: the old version back if the
                # new one never arrived, staging emptied.
                self._recover_locked()
                raise

    def rollback(self, app_id: str) -> tuple[AppManifest, AppManifest]:
        """Swap the installed version and the previous one; returns (now installed,
        now previous). A second rollback goes forward again. Crash-safe like an
        install: the installed one is set aside first, so an interruption leaves
        the old state or the new one (``recover``). NotFound without a previous."""
        if not _APP_ID.match(app_id):
            raise NotFound(f"{app_id!r} is not a valid app id", {"appId": app_id})
        with self._locked():
            current, previous = self.apps_dir / app_id, self.previous_dir / app_id
            if not current.is_dir():
                raise NotFound(f"app {app_id!r} is not installed", {"appId": app_id})
            if not previous.is_dir():
                raise NotFound(f"app {app_id!r} has no previous version to roll back to "
                               "(one is kept when a new version is installed)",
                               {"appId": app_id})
            back = load_manifest(previous)  # refuse a damaged one before anything moves
            aside = self.staging_dir / f"old.{secrets.token_hex(8)}.{app_id}"
            try:
                os.replace(current, aside)
                fsync_dir(self.apps_dir)
                self._step("old-aside")
                os.replace(previous, current)
                fsync_dir(self.previous_dir)
                fsync_dir(self.apps_dir)
                self._step("new-in")
                self._keep_previous(aside, app_id)
                self._step("done")
            except BaseException:
                self._recover_locked()
                raise
            log.info("rolled %s back to %s", app_id, back.version)
            return back, load_manifest(previous)

    def uninstall(self, app_id: str, keep_data: bool = False) -> None:
        """Remove an installed app and, unless ``keep_data``, its per-app VFS data."""
        # Only the id is checked: a damaged app (bad manifest) must still be removable.
        if not _APP_ID.match(app_id):
            raise NotFound(f"{app_id!r} is not a valid app id", {"appId": app_id})
        with self._locked():
            folder = self.apps_dir / app_id
            if not folder.is_dir():
                raise NotFound(f"app {app_id!r} is not installed", {"appId": app_id})
            self._discard(folder)
            if (self.previous_dir / app_id).is_dir():
                self._discard(self.previous_dir / app_id)
            if not keep_data and self.vfs_dir.is_dir():
                for zone in sorted(self.vfs_dir.iterdir()):
                    data = zone / app_id
                    if zone.name not in _SHARED_ZONES and zone.is_dir() \
                            and (data.exists() or data.is_symlink()):
                        self._discard(data)

    def recover(self) -> None:
        """Finish or roll back interrupted installs; idempotent, never blocks.

        If another process holds the store's lock it is mid-change and will clean
        up after itself, so this returns without touching anything.
        """
        with self._locked(timeout=None) as held:
            if held:
                self._recover_locked()

    # ------------------------------------------------------------------ internals

    def _install_locked(self, source: Path) -> AppManifest:
        token = secrets.token_hex(8)
        new = self.staging_dir / f"new.{token}"
        if source.is_dir():
            manifest = copy_folder(source, new, self.limits)
        else:
            manifest = safe_extract(source, new, self.limits)
        fsync_dir(new)
        fsync_dir(self.staging_dir)
        self._step("extracted")
        target = self.apps_dir / manifest.id
        old: Path | None = None
        if target.exists():
            old = self.staging_dir / f"old.{token}.{manifest.id}"
            os.replace(target, old)
            fsync_dir(self.apps_dir)
            fsync_dir(self.staging_dir)
            self._step("old-aside")
        os.replace(new, target)
        fsync_dir(self.apps_dir)
        self._step("new-in")
        if old is not None:
            self._keep_previous(old, manifest.id)
        self._step("done")
        log.info("installed %s %s", manifest.id, manifest.version)
        return manifest

    def _recover_locked(self) -> None:
        for item in sorted(self.staging_dir.iterdir()):
            kind, _, rest = item.name.partition(".")
            app_id = rest.partition(".")[2]
            if kind == "old" and _APP_ID.match(app_id) and not (self.apps_dir / app_id).exists():
                # Killed between setting the old version aside and moving the new one
                # in: the new one may be incomplete, so the old one goes back.
                os.replace(item, self.apps_dir / app_id)
                fsync_dir(self.apps_dir)
                log.warning("restored %s after an interrupted upgrade", app_id)
                continue
            if kind == "old" and _APP_ID.match(app_id) and item.is_dir():
                # Its successor arrived: it is the version to roll back to.
                self._keep_previous(item, app_id)
                continue
            log.info("removing leftover %s", item)
            _remove(item)
        fsync_dir(self.staging_dir)

    def _cached(self, package: Path) -> tuple[AppManifest, Path]:
        dest = self.cache_dir / _sha256(package)
        with contextlib.suppress(EstarterError):
            if dest.is_dir():
                return load_manifest(dest), dest
        with self._locked():
            token = secrets.token_hex(8)
            # Extract a private copy so the bytes hashed are the bytes extracted.
            copy = self.staging_dir / f"pkg.{token}"
            new = self.staging_dir / f"new.{token}"
            try:
                shutil.copyfile(package, copy)
                dest = self.cache_dir / _sha256(copy)
                manifest = safe_extract(copy, new, self.limits)
                if dest.exists() or dest.is_symlink():
                    self._discard(dest)  # damaged, or the file changed while we hashed
                os.replace(new, dest)
                fsync_dir(self.cache_dir)
            finally:
                _remove(copy)
                _remove(new)
        return manifest, dest

    def _keep_previous(self, folder: Path, app_id: str) -> None:
        """Make ``folder`` (a replaced version) ``previous/<id>``; the one kept before goes."""
        target = self.previous_dir / app_id
        if target.exists() or target.is_symlink():
            self._discard(target)
        os.replace(folder, target)
        fsync_dir(self.previous_dir)
        fsync_dir(folder.parent)

    def _discard(self, path: Path) -> None:
        """Take ``path`` out of view with one rename, then delete it."""
        trash = self.staging_dir / f"del.{secrets.token_hex(8)}"
        os.replace(path, trash)
        fsync_dir(path.parent)
        _remove(trash)

    def _step(self, name: str) -> None:
        if self._on_step is not None:
            self._on_step(name)

    @contextlib.contextmanager
    def _locked(self, timeout: float | None = -1.0) -> Iterator[bool]:
        """Hold the store's lock; ``timeout=None`` tries once and yields whether it got it.

        The default (-1) waits up to ``lock_timeout`` and raises Busy after that.
        """
        wait = self._lock_timeout if timeout is not None and timeout < 0 else timeout
        fd = os.open(self.home / "store.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            held = _flock(fd, wait)
            if not held and wait is not None:
                raise Busy(f"{self.home}: another process is changing the installed apps")
            try:
                yield held
            finally:
                if held:
                    fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _flock(fd: int, timeout: float | None) -> bool:
    deadline = time.monotonic() + (timeout or 0.0)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if timeout is None or time.monotonic() >= deadline:
                return False
            time.sleep(0.02)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


__all__ = ["STEPS", "AppStore"]
