"""Installed apps under ``$ESTARTER_HOME``, crash-safe at every step.

Layout::

    home/apps/<id>/installed.json        {"current": NAME, "previous": NAME|null}
    home/apps/<id>/<version>-<digest>/   one installed version, never changed once in
    home/staging/new.<token>/            an install being extracted or copied
    home/staging/mig.<token>.<id>/       an app of the old layout being migrated
    home/staging/del.<token>             something being deleted
    home/cache/packages/<sha256>/        a package run without installing, extracted once
    home/vfs/<zone>/<id>/                the app's data (owned by the VFS; removed on uninstall)

Every installed version has a folder of its own (its version and the digest of its
files) that nothing modifies while it exists: a run's policy names that folder, so a
run and its crash-restarts keep the files they started with whatever is installed
meanwhile, and an explicit start takes whatever ``current`` names then. A new version
lands in ``staging/``, moves whole into ``apps/<id>/`` by one rename, and becomes
current when ``installed.json`` (which names the current and the previous version
together) is replaced by one rename. So after a ``kill -9`` at any moment the app is
the old version or the new one, never half of one. A version folder that the pointer
file names neither as current nor as previous is deleted by the next change of the
store (and by every :class:`AppStore` construction), unless a live run pins it: the
kernel holds a shared ``flock`` on the folder of every run (:func:`pin_folder`) and the
clean-up skips a folder it cannot lock exclusively. An upgrade keeps one previous
version; a rollback swaps the two names. One ``flock`` on ``store.lock`` serialises the
processes that change the store; it dies with its holder.

A home of the old layout (the app's files at ``apps/<id>/`` itself, the version it
replaced at ``previous/<id>/``) is migrated by the first construction, crash-safely
(see :meth:`AppStore._migrate`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypedDict

from .errors import Busy, EstarterError, NotFound, PackageError
from .manifest import MANIFEST_NAME, AppManifest, load_manifest
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
# A version folder's name: <version, made safe>-<16 hex of the files' digest>.
_VERSION_DIR = re.compile(r"^[A-Za-z0-9._+-]{1,80}-[0-9a-f]{16}$")
POINTER = "installed.json"
# shared and system hold no per-app folders: a folder there named like an app id
# is shared data, and uninstalling an app must not delete it.
_SHARED_ZONES = frozenset({"shared", "system"})
_HASH_CHUNK = 1024 * 1024


class _Pointer(TypedDict):
    current: str
    previous: str | None

# The points at which an install can be interrupted; ``on_step`` is called at each
# (tests kill the process there to prove the store recovers). "old-aside" (an upgrade
# only) is the new version's folder in place, not yet current.
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
        self.previous_dir = self.home / "previous"  # the old layout's; migrated away
        self.cache_dir = self.home / "cache" / "packages"
        self.vfs_dir = self.home / "vfs"
        self.limits = limits
        self._lock_timeout = lock_timeout
        self._on_step = on_step
        for folder in (self.apps_dir, self.staging_dir, self.cache_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.recover()

    # ------------------------------------------------------------------ queries

    def get(self, app_id: str) -> tuple[AppManifest, Path]:
        """The installed app's manifest and the folder of its current version (a
        folder that stays as it is while it exists); raises NotFound."""
        if not _APP_ID.match(app_id):
            raise NotFound(f"{app_id!r} is not a valid app id", {"appId": app_id})
        pointer = self._pointer(app_id)
        if pointer is None:
            raise NotFound(f"app {app_id!r} is not installed", {"appId": app_id})
        folder = self.apps_dir / app_id / pointer["current"]
        manifest = load_manifest(folder)
        if manifest.id != app_id:
            raise PackageError(f"{folder}: holds the manifest of {manifest.id!r}, not {app_id!r}")
        return manifest, folder

    def previous(self, app_id: str) -> AppManifest | None:
        """The manifest of the version kept for ``rollback``, or None."""
        folder = self.previous_folder(app_id)
        if folder is None:
            return None
        try:
            return load_manifest(folder)
        except EstarterError as exc:
            log.warning("previous version of %s is damaged: %s", app_id, exc)
            return None

    def previous_folder(self, app_id: str) -> Path | None:
        """The folder of the version kept for ``rollback``, or None."""
        if not _APP_ID.match(app_id):
            return None
        try:
            pointer = self._pointer(app_id)
        except EstarterError:
            return None
        name = pointer.get("previous") if pointer else None
        folder = self.apps_dir / app_id / name if name else None
        return folder if folder is not None and folder.is_dir() else None

    def list(self) -> list[AppManifest]:
        """Installed apps sorted by id; a damaged one is logged and skipped."""
        apps: list[AppManifest] = []
        for folder in sorted(self.apps_dir.iterdir()):
            if not (folder / POINTER).exists():
                continue  # a folder left for a live run of an uninstalled app
            try:
                apps.append(self.get(folder.name)[0])
            except EstarterError as exc:
                log.warning("skipping damaged installed app %s: %s", folder, exc)
        return apps

    def resolve(self, path_or_id: str | os.PathLike[str]) -> tuple[AppManifest, Path]:
        """An installed app id, an app folder (used in place) or a package (cached).

        A string that is a valid id of an installed app means that app (write
        ``./name`` for a folder of the same name); anything else is a path. The
        path of an installed app (``apps/<id>``) means its current version.
        """
        if isinstance(path_or_id, str) and _APP_ID.match(path_or_id) \
                and not is_package_path(path_or_id) and self._installed(path_or_id):
            return self.get(path_or_id)
        path = Path(path_or_id)
        if path.is_dir():
            real = path.resolve()
            if real.parent == self.apps_dir.resolve() and self._installed(real.name):
                return self.get(real.name)
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
        it moved into ``apps/<id>/`` as a version folder of its own and made current.
        The version it replaces becomes the previous one (kept for ``rollback``).
        """
        source = Path(source)
        if not source.exists():
            raise PackageError(f"{source}: no such app folder or package")
        with self._locked():
            try:
                return self._install_locked(source)
            except BaseException:
                # The same repair a later start would do: staging emptied, a version
                # folder that never became current removed.
                self._recover_locked()
                raise

    def rollback(self, app_id: str) -> tuple[AppManifest, AppManifest]:
        """Swap the installed version and the previous one; returns (now installed,
        now previous). A second rollback goes forward again. One rename of the pointer
        file: an interruption leaves the old state or the new one. NotFound without a
        previous version."""
        if not _APP_ID.match(app_id):
            raise NotFound(f"{app_id!r} is not a valid app id", {"appId": app_id})
        with self._locked():
            pointer = self._pointer(app_id)
            if pointer is None:
                raise NotFound(f"app {app_id!r} is not installed", {"appId": app_id})
            previous = self.previous_folder(app_id)
            if previous is None:
                raise NotFound(f"app {app_id!r} has no previous version to roll back to "
                               "(one is kept when a new version is installed)",
                               {"appId": app_id})
            back = load_manifest(previous)  # refuse a damaged one before anything moves
            try:
                self._step("old-aside")
                self._write_pointer(app_id, previous.name, pointer["current"])
                self._step("new-in")
                self._collect(app_id)
                self._step("done")
            except BaseException:
                self._recover_locked()
                raise
            log.info("rolled %s back to %s", app_id, back.version)
            return back, load_manifest(self.apps_dir / app_id / pointer["current"])

    def uninstall(self, app_id: str, keep_data: bool = False) -> None:
        """Remove an installed app and, unless ``keep_data``, its per-app VFS data.

        The app is gone with the removal of its pointer file; a version folder a live
        run still uses is removed once that run has ended (the next store change)."""
        # Only the id is checked: a damaged app (bad manifest) must still be removable.
        if not _APP_ID.match(app_id):
            raise NotFound(f"{app_id!r} is not a valid app id", {"appId": app_id})
        with self._locked():
            app_dir = self.apps_dir / app_id
            if not (app_dir / POINTER).exists():
                raise NotFound(f"app {app_id!r} is not installed", {"appId": app_id})
            (app_dir / POINTER).unlink()
            fsync_dir(app_dir)
            self._collect(app_id)
            if not keep_data and self.vfs_dir.is_dir():
                for zone in sorted(self.vfs_dir.iterdir()):
                    data = zone / app_id
                    if zone.name not in _SHARED_ZONES and zone.is_dir() \
                            and (data.exists() or data.is_symlink()):
                        self._discard(data)

    def recover(self) -> None:
        """Finish or roll back interrupted work, migrate the old layout, delete version
        folders nothing names or uses; idempotent, never blocks.

        If another process holds the store's lock it is mid-change and will clean
        up after itself, so this returns without touching anything.
        """
        with self._locked(timeout=None) as held:
            if held:
                self._recover_locked()

    # ------------------------------------------------------------------ internals

    def _installed(self, app_id: str) -> bool:
        return (self.apps_dir / app_id / POINTER).is_file()

    def _pointer(self, app_id: str) -> _Pointer | None:
        """The app's ``installed.json`` (None if there is none); PackageError if damaged."""
        return _read_pointer(self.apps_dir / app_id / POINTER)

    def _write_pointer(self, app_id: str, current: str, previous: str | None,
                       app_dir: Path | None = None) -> None:
        """Replace the pointer file by one rename (made durable first)."""
        app_dir = app_dir if app_dir is not None else self.apps_dir / app_id
        tmp = app_dir / f".{POINTER}.{secrets.token_hex(8)}"
        data = json.dumps({"current": current, "previous": previous}).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, app_dir / POINTER)
        fsync_dir(app_dir)

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
        name = _version_name(manifest.version, _tree_digest(new))
        app_dir = self.apps_dir / manifest.id
        app_dir.mkdir(exist_ok=True)
        fsync_dir(self.apps_dir)
        target = app_dir / name
        if target.is_dir():
            _remove(new)  # these very files are installed already (and never changed)
        else:
            os.replace(new, target)
            fsync_dir(app_dir)
            fsync_dir(self.staging_dir)
        pointer = self._pointer(manifest.id)
        if pointer is not None:
            self._step("old-aside")
        if pointer is None or pointer["current"] != name:
            previous = pointer["current"] if pointer is not None else None
            self._write_pointer(manifest.id, name, previous)
        self._step("new-in")
        self._collect(manifest.id)
        self._step("done")
        log.info("installed %s %s as %s", manifest.id, manifest.version, name)
        return manifest

    def _recover_locked(self) -> None:
        for item in sorted(self.staging_dir.iterdir()):
            kind, _, rest = item.name.partition(".")
            app_id = rest.partition(".")[2]
            if kind == "mig" and _APP_ID.match(app_id) and item.is_dir():
                self._finish_migration(item, app_id)
                continue
            if kind == "old" and _APP_ID.match(app_id) and item.is_dir():
                self._recover_old_layout(item, app_id)
                continue
            log.info("removing leftover %s", item)
            _remove(item)
        fsync_dir(self.staging_dir)
        for app_dir in sorted(self.apps_dir.iterdir()):
            if _APP_ID.match(app_dir.name) and app_dir.is_dir() \
                    and (app_dir / MANIFEST_NAME).exists() and not (app_dir / POINTER).exists():
                self._migrate(app_dir.name)
        if self.previous_dir.is_dir():  # what the old layout kept of uninstalled apps
            for item in sorted(self.previous_dir.iterdir()):
                self._discard(item)
            with contextlib.suppress(OSError):
                self.previous_dir.rmdir()
        for app_dir in sorted(self.apps_dir.iterdir()):
            if app_dir.is_dir() and not app_dir.is_symlink():
                self._collect(app_dir.name)

    def _collect(self, app_id: str) -> None:
        """Delete what ``apps/<id>/`` holds besides the pointer file and the versions it
        names, except a version folder a live run pins; the folder itself once empty."""
        app_dir = self.apps_dir / app_id
        if not app_dir.is_dir():
            return
        try:
            pointer = self._pointer(app_id)
        except EstarterError as exc:
            log.warning("leaving %s as it is: %s", app_dir, exc)
            return
        keep = {POINTER}
        if pointer is not None:
            keep |= {name for name in (pointer["current"], pointer["previous"]) if name}
        for item in sorted(app_dir.iterdir()):
            if item.name in keep:
                continue
            if item.is_dir() and not item.is_symlink():
                if not self._discard_unpinned(item):
                    log.info("keeping %s until the run that uses it ends", item)
            else:
                _remove(item)
        if pointer is None:
            with contextlib.suppress(OSError):  # not empty: a live run's version is left
                app_dir.rmdir()
                fsync_dir(self.apps_dir)

    def _discard_unpinned(self, folder: Path) -> bool:
        """Delete ``folder`` unless a run pins it (see :func:`pin_folder`)."""
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            self._discard(folder)
            return True
        finally:
            os.close(fd)

    # -- the old layout (apps/<id>/ the app itself, previous/<id>/ the one it replaced)

    def _recover_old_layout(self, item: Path, app_id: str) -> None:
        """``staging/old.<token>.<id>``: an upgrade of the old layout was interrupted."""
        target = self.apps_dir / app_id
        if not target.exists():
            # Killed between setting the old version aside and moving the new one in:
            # the new one may be incomplete, so the old one goes back (migrated next).
            os.replace(item, target)
            fsync_dir(self.apps_dir)
            log.warning("restored %s after an interrupted upgrade", app_id)
        elif (target / MANIFEST_NAME).exists() and not (target / POINTER).exists():
            # Its successor arrived: it is the version to roll back to.
            self.previous_dir.mkdir(exist_ok=True)
            kept = self.previous_dir / app_id
            if kept.exists() or kept.is_symlink():
                self._discard(kept)
            os.replace(item, kept)
            fsync_dir(self.previous_dir)
        else:
            _remove(item)
        fsync_dir(self.staging_dir)

    def _migrate(self, app_id: str) -> None:
        """Move an app of the old layout into the new one, crash-safely: the pointer
        file is written first in ``staging/mig.<token>.<id>/``, then the app's folder
        and its previous version are renamed into it, then it is renamed to
        ``apps/<id>``. ``_finish_migration`` completes a migration that was killed."""
        app_dir = self.apps_dir / app_id
        old_prev = self.previous_dir / app_id
        current = _version_name(_version_of(app_dir), _tree_digest(app_dir))
        previous = None
        if old_prev.is_dir() and not old_prev.is_symlink():
            previous = _version_name(_version_of(old_prev), _tree_digest(old_prev))
            if previous == current:
                previous = None  # the same files: nothing to roll back to
        mig = self.staging_dir / f"mig.{secrets.token_hex(8)}.{app_id}"
        mig.mkdir()
        self._write_pointer(app_id, current, previous, app_dir=mig)
        fsync_dir(self.staging_dir)
        self._step("migrate-pointer")
        os.replace(app_dir, mig / current)
        fsync_dir(self.apps_dir)
        self._step("migrate-current")
        self._finish_migration(mig, app_id)
        log.info("moved %s to the layout of one folder per version", app_id)

    def _finish_migration(self, mig: Path, app_id: str) -> None:
        target = self.apps_dir / app_id
        try:
            pointer = _read_pointer(mig / POINTER)
        except EstarterError:
            pointer = None
        if pointer is None or target.exists() or not (mig / str(pointer["current"])).is_dir():
            # Killed before the app's folder moved: it is still where it was.
            _remove(mig)
            return
        name = pointer["previous"]
        old_prev = self.previous_dir / app_id
        if name and not (mig / name).exists():
            if old_prev.is_dir() and not old_prev.is_symlink():
                os.replace(old_prev, mig / name)
                fsync_dir(self.previous_dir)
            else:
                self._write_pointer(app_id, str(pointer["current"]), None, app_dir=mig)
        self._step("migrate-previous")
        os.replace(mig, target)
        fsync_dir(self.apps_dir)
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


def pin_folder(folder: Path) -> int | None:
    """Pin a version folder for a run (a shared ``flock`` on it): the store does not
    delete it until :func:`unpin_folder`. Returns the descriptor to pass there, or
    None if the folder cannot be pinned (gone, or being deleted)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def unpin_folder(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def _read_pointer(path: Path) -> _Pointer | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PackageError(f"{path}: cannot be read: {exc}") from None
    try:
        data = json.loads(raw)
        current, previous = data["current"], data.get("previous")
    except (ValueError, KeyError, TypeError):
        raise PackageError(f"{path}: damaged") from None
    if not isinstance(current, str):
        raise PackageError(f"{path}: names no current version")
    for name in (current, previous):
        if name is not None and (not isinstance(name, str) or not _VERSION_DIR.match(name)):
            raise PackageError(f"{path}: names {name!r}, not a version folder")
    return {"current": current, "previous": previous}


def _version_name(version: str, digest: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._+-]", "_", version)[:63] or "0"
    return f"{safe}-{digest[:16]}"


def _version_of(folder: Path) -> str:
    try:
        return load_manifest(folder).version
    except EstarterError:
        return "damaged"


def _tree_digest(root: Path) -> str:
    """A digest of a folder's names, kinds, exec bits and contents."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        rel = os.fsencode(path.relative_to(root).as_posix())
        if path.is_symlink():
            digest.update(b"L" + rel + b"\0" + os.fsencode(os.readlink(path)) + b"\0")
        elif path.is_dir():
            digest.update(b"D" + rel + b"\0")
        else:
            digest.update(b"F" + rel + (b"x" if os.access(path, os.X_OK) else b"-") + b"\0")
            with open(path, "rb") as fh:
                while chunk := fh.read(_HASH_CHUNK):
                    digest.update(chunk)
            digest.update(b"\0")
    return digest.hexdigest()


__all__ = ["POINTER", "STEPS", "AppStore", "pin_folder", "unpin_folder"]
