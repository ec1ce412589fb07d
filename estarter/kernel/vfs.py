"""The virtual file system: ``/{zone}/{relative}`` paths of one app, on disk.

Containment is decided on what the kernel opens, never on the path string: every
path is walked one component at a time from the zone's folder with
``openat(dir_fd, name, O_NOFOLLOW)``, so a symlink (planted, chained, or swapped in
while a call runs) makes the call fail instead of leading out, and ``..`` is
refused outright. Writes go to a temp file in the target's folder, are fsynced,
renamed over the target and the folder is fsynced: a crash leaves the old or the
new content. A call moves at most ``MAX_BODY_BYTES``; bigger files are read in
ranges (``offset``/``length``) and written with ``append``.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import contextlib
import errno
import os
import secrets
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import InvalidParams, NotFound, PermissionDenied, QuotaExceeded
from ..paths import PRIVATE_ZONES, ZONES, zone_dir

MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_PATH_CHARS = 4096
MAX_LIST_ENTRIES = 10_000
SHARED_QUOTA_BYTES = 1024 * 1024 * 1024
USAGE_REFRESH_SECONDS = 5.0  # apps also write their appdata directly: re-measure this often
TMP_PREFIX = ".estarter-tmp-"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1024 * 1024


def _refused(path: str, why: str) -> PermissionDenied:
    return PermissionDenied(f"{path}: {why}", {"path": path})


def split_path(path: Any) -> tuple[str, list[str]]:
    """A virtual path -> (zone, components). Pure string checks; no I/O.

    A path without a leading ``/`` is relative to ``/appdata``.
    """
    if not isinstance(path, str):
        raise InvalidParams("param path must be a string", {"param": "path"})
    if not path or len(path) > MAX_PATH_CHARS:
        raise InvalidParams("path is empty or too long", {"path": path[:200]})
    if "\0" in path or "\\" in path:
        raise InvalidParams(f"{path!r}: NUL and backslash are not allowed", {"path": path})
    if not path.startswith("/"):
        path = "/appdata/" + path
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise _refused(path, "'..' is not allowed")
    if not parts or parts[0] not in ZONES:
        raise InvalidParams(f"{path}: the first component must be one of {', '.join(ZONES)}",
                            {"path": path})
    if any(len(p.encode()) > 255 for p in parts):
        raise InvalidParams(f"{path}: a name is longer than 255 bytes", {"path": path})
    return parts[0], parts[1:]


class _Usage:
    """Bytes an app (or the shared zone) holds: measured by a walk, kept by deltas."""

    __slots__ = ("bytes", "measured_at")

    def __init__(self, size: int, now: float) -> None:
        self.bytes = size
        self.measured_at = now


class Vfs:
    """Thread-safe. Every method takes the caller's app id and a virtual path."""

    def __init__(self, home: Path, quota_of: Callable[[str], int],
                 clock: Callable[[], float] = time.monotonic,
                 shared_quota: int = SHARED_QUOTA_BYTES) -> None:
        self.home = Path(home)
        self._quota_of = quota_of
        self._clock = clock
        self._shared_quota = shared_quota
        self._lock = threading.Lock()
        self._usage: dict[str, _Usage] = {}

    # -- fs.* ------------------------------------------------------------------

    def read(self, app_id: str, path: str, encoding: str = "text", offset: int = 0,
             length: int | None = None) -> dict[str, Any]:
        if encoding not in ("text", "base64"):
            raise InvalidParams("encoding must be text or base64", {"param": "encoding"})
        if offset < 0 or (length is not None and length < 0):
            raise InvalidParams("offset and length must be >= 0")
        with self._parent(app_id, path) as (parent, name, _):
            fd = self._open(parent, name, os.O_RDONLY, path)
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise InvalidParams(f"{path} is not a file", {"path": path})
                want = st.st_size - offset if length is None else length
                want = max(0, min(want, st.st_size - offset))
                if want > MAX_BODY_BYTES:
                    raise InvalidParams(
                        f"{path}: {want} bytes is more than one call moves "
                        f"({MAX_BODY_BYTES}); read it in ranges with offset/length",
                        {"path": path, "size": st.st_size, "max": MAX_BODY_BYTES})
                data = os.pread(fd, want, offset) if want else b""
            finally:
                os.close(fd)
        out: dict[str, Any] = {"path": path, "size": st.st_size}
        if encoding == "base64":
            out["data"] = base64.b64encode(data).decode("ascii")
        else:
            try:
                out["text"] = data.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidParams(f"{path} is not UTF-8 text; read it with encoding "
                                    "base64", {"path": path}) from None
        return out

    def write(self, app_id: str, path: str, text: str | None = None, data: str | None = None,
              append: bool = False) -> dict[str, Any]:
        body = self._body(path, text, data)
        zone, _ = split_path(path)
        self._writable(zone, path)
        with self._parent(app_id, path, create=True) as (parent, name, _):
            old = self._size_of(parent, name, path)
            new_size = old + len(body) if append else len(body)
            self._charge(app_id, zone, new_size - old, path)
            try:
                self._replace(parent, name, body, append, path)
            except BaseException:
                self._charge(app_id, zone, old - new_size, path, check=False)
                raise
        return {"path": path, "written": len(body)}

    def delete(self, app_id: str, path: str) -> dict[str, Any]:
        zone, parts = split_path(path)
        self._writable(zone, path)
        if not parts:
            raise _refused(path, "a zone itself cannot be deleted")
        with self._parent(app_id, path) as (parent, name, _):
            try:
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                return {"deleted": False}
            if stat.S_ISDIR(st.st_mode):
                # rmtree with dir_fd walks by fds and never follows symlinks.
                shutil.rmtree(name, dir_fd=parent)
            else:
                os.unlink(name, dir_fd=parent)
            os.fsync(parent)
        self._invalidate(app_id, zone)
        return {"deleted": True}

    def mkdir(self, app_id: str, path: str) -> dict[str, Any]:
        zone, parts = split_path(path)
        self._writable(zone, path)
        if not parts:
            return {"created": False}
        with self._parent(app_id, path, create=True) as (parent, name, _):
            try:
                os.mkdir(name, 0o755, dir_fd=parent)
            except FileExistsError:
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    raise InvalidParams(f"{path} exists and is not a folder",
                                        {"path": path}) from None
                return {"created": False}
        return {"created": True}

    def list(self, app_id: str, path: str) -> list[dict[str, Any]]:
        with self._dir(app_id, path) as fd:
            items = []
            with os.scandir(fd) as entries:
                for entry in entries:
                    if entry.name.startswith(TMP_PREFIX):
                        continue
                    st = entry.stat(follow_symlinks=False)
                    items.append({"name": entry.name, "isDir": stat.S_ISDIR(st.st_mode),
                                  "size": st.st_size, "modified": st.st_mtime})
                    if len(items) >= MAX_LIST_ENTRIES:
                        break
        return sorted(items, key=lambda i: i["name"])

    def exists(self, app_id: str, path: str) -> dict[str, Any]:
        try:
            self.stat(app_id, path)
        except NotFound:
            return {"exists": False}
        return {"exists": True}

    def stat(self, app_id: str, path: str) -> dict[str, Any]:
        zone, parts = split_path(path)
        if not parts:
            with self._dir(app_id, path) as fd:
                st = os.fstat(fd)
            name = zone
        else:
            with self._parent(app_id, path) as (parent, name, _):
                try:
                    st = os.stat(name, dir_fd=parent, follow_symlinks=False)
                except FileNotFoundError:
                    raise NotFound(f"{path} does not exist", {"path": path}) from None
            if stat.S_ISLNK(st.st_mode):
                raise _refused(path, "symlinks are not followed")
        return {"name": name, "size": st.st_size, "modified": st.st_mtime,
                "isDir": stat.S_ISDIR(st.st_mode)}

    def usage(self, app_id: str) -> int:
        """Bytes the app holds in its private zones (measured if not known)."""
        return self._usage_of(app_id, self._clock()).bytes

    # -- walking ---------------------------------------------------------------

    def _root(self, app_id: str, zone: str, create: bool) -> int:
        root = zone_dir(self.home, zone, app_id)
        if create or zone in PRIVATE_ZONES:
            root.mkdir(parents=True, exist_ok=True)
        try:
            return os.open(root, _DIR_FLAGS)
        except FileNotFoundError:
            raise NotFound(f"/{zone} does not exist", {"path": f"/{zone}"}) from None
        except OSError as exc:  # ELOOP: the zone folder itself was swapped for a link
            raise _refused(f"/{zone}", f"zone folder unusable ({exc.strerror})") from None

    def _walk(self, root: int, names: builtins.list[str], path: str, create: bool) -> int:
        """Open ``names`` below ``root`` as folders, never following a link; returns an fd."""
        fd = os.dup(root)
        try:
            for name in names:
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(name, 0o755, dir_fd=fd)
                try:
                    nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    raise NotFound(f"{path}: {name} does not exist", {"path": path}) from None
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        why = "a component is a symlink or not a folder"
                        raise _refused(path, why) from None
                    raise
                os.close(fd)
                fd = nxt
            return fd
        except BaseException:
            os.close(fd)
            raise

    @contextlib.contextmanager
    def _parent(self, app_id: str, path: str,
                create: bool = False) -> Iterator[tuple[int, str, str]]:
        """(fd of the parent folder, last name, zone) of a path below a zone."""
        zone, parts = split_path(path)
        if not parts:
            raise InvalidParams(f"{path} is a zone, not a file", {"path": path})
        root = self._root(app_id, zone, create and zone != "system")
        try:
            parent = self._walk(root, parts[:-1], path, create)
        finally:
            os.close(root)
        try:
            yield parent, parts[-1], zone
        finally:
            os.close(parent)

    @contextlib.contextmanager
    def _dir(self, app_id: str, path: str) -> Iterator[int]:
        zone, parts = split_path(path)
        root = self._root(app_id, zone, False)
        try:
            fd = self._walk(root, parts, path, False)
        finally:
            os.close(root)
        try:
            yield fd
        finally:
            os.close(fd)

    @staticmethod
    def _open(parent: int, name: str, flags: int, path: str) -> int:
        try:
            return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        except FileNotFoundError:
            raise NotFound(f"{path} does not exist", {"path": path}) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _refused(path, "symlinks are not followed") from None
            if exc.errno == errno.EISDIR:
                raise InvalidParams(f"{path} is a folder", {"path": path}) from None
            raise

    @staticmethod
    def _size_of(parent: int, name: str, path: str) -> int:
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return 0
        if stat.S_ISLNK(st.st_mode):
            raise _refused(path, "symlinks are not followed")
        if stat.S_ISDIR(st.st_mode):
            raise InvalidParams(f"{path} is a folder", {"path": path})
        return st.st_size

    # -- writing ---------------------------------------------------------------

    @staticmethod
    def _writable(zone: str, path: str) -> None:
        if zone == "system":
            raise _refused(path, "/system is read-only")

    @staticmethod
    def _body(path: str, text: str | None, data: str | None) -> bytes:
        if (text is None) == (data is None):
            raise InvalidParams("give exactly one of text and data", {"path": path})
        raw_len = len(text if text is not None else data)  # type: ignore[arg-type]  # one is set
        # Checked before decoding, so an oversize body costs no second copy.
        if raw_len > MAX_BODY_BYTES * (4 if text is not None else 4 / 3) + 4:
            raise InvalidParams(f"one call writes at most {MAX_BODY_BYTES} bytes; "
                                "write bigger files in parts with append", {"path": path})
        if text is not None:
            body = text.encode("utf-8")
        else:
            try:
                body = base64.b64decode(data or "", validate=True)
            except (binascii.Error, ValueError):
                raise InvalidParams("data is not valid base64", {"param": "data"}) from None
        if len(body) > MAX_BODY_BYTES:
            raise InvalidParams(f"one call writes at most {MAX_BODY_BYTES} bytes; "
                                "write bigger files in parts with append", {"path": path})
        return body

    @staticmethod
    def _replace(parent: int, name: str, body: bytes, append: bool, path: str) -> None:
        tmp = f"{TMP_PREFIX}{secrets.token_hex(8)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644, dir_fd=parent)
        try:
            try:
                if append:
                    Vfs._copy_old(parent, name, fd, path)
                view = memoryview(body)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=parent)
            raise
        os.fsync(parent)

    @staticmethod
    def _copy_old(parent: int, name: str, out: int, path: str) -> None:
        try:
            src = Vfs._open(parent, name, os.O_RDONLY, path)
        except NotFound:
            return
        try:
            while chunk := os.read(src, _CHUNK):
                os.write(out, chunk)
        finally:
            os.close(src)

    # -- quota -----------------------------------------------------------------

    def _charge(self, app_id: str, zone: str, delta: int, path: str,
                check: bool = True) -> None:
        key = "/shared" if zone == "shared" else app_id
        limit = self._shared_quota if zone == "shared" else self._quota_of(app_id)
        now = self._clock()
        with self._lock:
            usage = self._usage_locked(key, now)
            if check and delta > 0 and limit > 0 and usage.bytes + delta > limit:
                raise QuotaExceeded(
                    f"{path}: the write would take {key} to {usage.bytes + delta} bytes, "
                    f"over its quota of {limit}", {"path": path, "quota": limit,
                                                   "used": usage.bytes})
            usage.bytes = max(0, usage.bytes + delta)

    def _invalidate(self, app_id: str, zone: str) -> None:
        with self._lock:
            self._usage.pop("/shared" if zone == "shared" else app_id, None)

    def _usage_of(self, key: str, now: float) -> _Usage:
        with self._lock:
            return self._usage_locked(key, now)

    def _usage_locked(self, key: str, now: float) -> _Usage:
        usage = self._usage.get(key)
        if usage is None or now - usage.measured_at > USAGE_REFRESH_SECONDS:
            if key == "/shared":
                roots = [zone_dir(self.home, "shared", "")]
            else:
                roots = [zone_dir(self.home, z, key) for z in PRIVATE_ZONES]
            usage = _Usage(sum(_tree_bytes(r) for r in roots), now)
            self._usage[key] = usage
        return usage


def _tree_bytes(root: Path) -> int:
    """Bytes of the regular files under ``root``; links are not followed."""
    total = 0
    stack = [str(root)]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        with contextlib.suppress(OSError):
                            total += entry.stat(follow_symlinks=False).st_size
        except OSError:
            continue
    return total
