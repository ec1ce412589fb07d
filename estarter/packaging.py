"""App packages (``.app.zip`` / ``.eapp``): deterministic packing and hostile-input-safe opening.

A package is untrusted input. :func:`safe_extract` checks every entry of the archive
(names, types, sizes, ratios, layout in the file, the manifest) before it writes a
single byte, then extracts into a fresh staging folder while counting the bytes it
really decompresses. Any refusal is a :class:`~estarter.errors.PackageError` (or a
:class:`~estarter.errors.ManifestError` for a bad manifest) whose one-line message
names the entry, and the staging folder is removed: nothing lands anywhere else.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import stat
import struct
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import BinaryIO

from .errors import ManifestError, PackageError
from .manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES, AppManifest, load_manifest, parse_manifest

PACKAGE_SUFFIXES = (".app.zip", ".eapp")
SKIPPED_DIRS = frozenset({"__pycache__", ".git"})
# 1980-01-01 is the earliest time a zip can hold; a fixed stamp makes packs reproducible.
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
_CHUNK = 1024 * 1024
_MAX_NAME = 1024
_MAX_COMPONENT = 255  # bytes; longer names fail on every common file system
_DRIVE = re.compile(r"^[A-Za-z]:")
_SUPPORTED_COMPRESSION = {
    zipfile.ZIP_STORED: "stored",
    zipfile.ZIP_DEFLATED: "deflate",
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "lzma",
}

# End-of-central-directory records, read by hand so that the entry count and the
# central directory's size are bounded *before* zipfile parses (and allocates) it.
_EOCD = struct.Struct("<4s4H2LH")
_EOCD64_LOCATOR = struct.Struct("<4sLQL")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")
_CD_BYTES_PER_ENTRY = 512  # generous for real names; bounds memory for a lying entry count


@dataclass(frozen=True)
class PackageLimits:
    """Bounds applied to a package before and while it is extracted."""

    max_entries: int = 10_000
    max_total_bytes: int = 512 * 1024 * 1024
    max_ratio: int = 200
    # Small entries compress absurdly well legitimately (a 1 MiB file of spaces);
    # the ratio bound applies only above this size.
    ratio_min_bytes: int = 1024 * 1024


DEFAULT_LIMITS = PackageLimits()


@dataclass(frozen=True)
class AppSource:
    """An opened app: its validated manifest and the folder that holds ``manifest.json``.

    A package extracted into a temporary folder this module chose (``cleanup_dir``)
    is removed by :meth:`close`, which is idempotent.
    """

    manifest: AppManifest
    root: Path
    origin: Path
    is_package: bool
    cleanup_dir: Path | None = None

    @property
    def entry_path(self) -> Path:
        return self.root / self.manifest.entry

    def close(self) -> None:
        if self.cleanup_dir is not None:
            shutil.rmtree(self.cleanup_dir, ignore_errors=True)

    def __enter__(self) -> AppSource:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# ---------------------------------------------------------------------------- folders


def collect_files(app_dir: Path, exclude: Path | None = None) -> list[tuple[str, Path]]:
    """The files of an app folder as sorted ``(posix name, path)`` pairs.

    Skips ``__pycache__`` and ``.git``; follows symlinks that stay inside the folder
    (their targets are stored as regular files, since packages refuse symlink
    entries) and refuses those that leave it, dangling ones and special files.
    """
    root = app_dir.resolve()
    skip = exclude.resolve() if exclude is not None else None
    found: dict[str, Path] = {}
    seen_dirs: set[Path] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        real_here = here.resolve()
        if not real_here.is_relative_to(root):
            raise PackageError(f"{here.relative_to(root)}: symlink leaves the app folder")
        if real_here in seen_dirs:  # a symlink loop, or two links to one folder
            dirnames[:] = []
            continue
        seen_dirs.add(real_here)
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS)
        for name in filenames:
            path = here / name
            rel = path.relative_to(root).as_posix()
            real = path.resolve()
            if not real.is_relative_to(root):
                raise PackageError(f"{rel}: symlink leaves the app folder")
            if real == skip:
                continue
            try:
                mode = real.stat().st_mode
            except OSError:
                raise PackageError(f"{rel}: dangling symlink") from None
            if not stat.S_ISREG(mode):
                raise PackageError(f"{rel}: not a regular file")
            found[rel] = path
    return sorted(found.items())


def _check_entry_file(files: set[str], manifest: AppManifest, where: str) -> None:
    entry = "/".join(p for p in PurePosixPath(manifest.entry).parts if p != ".")
    if entry not in files:
        raise PackageError(f"{where}: entry {manifest.entry!r} is not a file in the package",
                           {"key": "entry"})


def pack(app_dir: Path, out: Path | None = None) -> Path:
    """Write ``<id>.app.zip`` (in the current folder unless ``out`` says otherwise).

    The archive is deterministic (sorted entries, fixed timestamps and modes) and
    appears atomically: it is written to a temporary file next to ``out`` and renamed.
    """
    app_dir = Path(app_dir)
    manifest = load_manifest(app_dir)
    target = Path(out) if out is not None else Path.cwd() / f"{manifest.id}.app.zip"
    if target.is_dir():
        target = target / f"{manifest.id}.app.zip"
    files = collect_files(app_dir, exclude=target)
    _check_entry_file({name for name, _ in files}, manifest, str(app_dir))
    _check_folder_limits(files, DEFAULT_LIMITS, str(app_dir))
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w") as zf:
            for name, path in files:
                info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.create_system = 3  # unix, so the mode bits below are honoured
                mode = 0o755 if os.stat(path).st_mode & 0o111 else 0o644
                info.external_attr = (stat.S_IFREG | mode) << 16
                size = os.stat(path).st_size
                with open(path, "rb") as src, zf.open(info, "w", force_zip64=size > 2**31) as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
            zf.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    return target


def _check_folder_limits(files: list[tuple[str, Path]], limits: PackageLimits, where: str) -> None:
    if len(files) > limits.max_entries:
        raise PackageError(f"{where}: {len(files)} files, more than {limits.max_entries}")
    total = sum(path.stat().st_size for _, path in files)
    if total > limits.max_total_bytes:
        raise PackageError(f"{where}: {total} bytes, more than {limits.max_total_bytes}")


def copy_folder(app_dir: Path, staging_dir: Path, limits: PackageLimits = DEFAULT_LIMITS,
                durable: bool = True) -> AppManifest:
    """Copy an app folder into a new ``staging_dir`` under the same rules as packing.

    The copy is validated again after copying, so a folder changed meanwhile cannot
    slip an unchecked manifest in. ``staging_dir`` is removed on failure.
    """
    load_manifest(app_dir)
    files = collect_files(app_dir)
    _check_folder_limits(files, limits, str(app_dir))
    staging_dir.mkdir(parents=True)
    try:
        for name, path in files:
            dest = staging_dir / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            mode = 0o755 if os.stat(path).st_mode & 0o111 else 0o644
            with open(path, "rb") as src, _create(dest, mode) as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
                if durable:
                    dst.flush()
                    os.fsync(dst.fileno())
        manifest = load_manifest(staging_dir)
        _check_entry_file({name for name, _ in files}, manifest, str(app_dir))
        return manifest
    except BaseException:
        shutil.rmtree(staging_dir, ignore_errors=True)
        raise


# ---------------------------------------------------------------------------- packages


def open_source(path: Path, staging_dir: Path | None = None,
                limits: PackageLimits = DEFAULT_LIMITS) -> AppSource:
    """Open an app folder (used in place) or a package (extracted safely).

    A package goes into ``staging_dir`` when given (the caller owns it), else into a
    temporary folder that :meth:`AppSource.close` removes.
    """
    path = Path(path)
    if path.is_dir():
        manifest = load_manifest(path)
        if not (path / manifest.entry).is_file():
            raise PackageError(f"{path}: entry {manifest.entry!r} is not a file in the folder",
                               {"key": "entry"})
        return AppSource(manifest, path, path, is_package=False)
    if not path.exists():
        raise PackageError(f"{path}: no such app folder or package")
    if staging_dir is not None:
        return AppSource(safe_extract(path, staging_dir, limits), staging_dir, path, True)
    tmp = Path(tempfile.mkdtemp(prefix="estarter-app-"))
    try:
        manifest = safe_extract(path, tmp / "app", limits, durable=False)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return AppSource(manifest, tmp / "app", path, is_package=True, cleanup_dir=tmp)


@dataclass(frozen=True)
class _Entry:
    info: zipfile.ZipInfo
    name: str  # normalised posix name, no trailing slash
    is_dir: bool
    mode: int


def safe_extract(zip_path: Path, staging_dir: Path, limits: PackageLimits = DEFAULT_LIMITS,
                 durable: bool = True) -> AppManifest:
    """Validate every entry of a package, then extract it into a new ``staging_dir``.

    ``staging_dir`` must not exist (it is created) and is removed on any failure.
    ``durable`` fsyncs each file so a later rename publishes complete files.
    """
    zip_path = Path(zip_path)
    where = zip_path.name
    try:
        fh = zip_path.open("rb")  # closed by the ExitStack below
    except OSError as exc:
        raise PackageError(f"{where}: cannot read: {exc.strerror or exc}") from None
    with contextlib.ExitStack() as stack:
        stack.enter_context(fh)
        cd_start = _check_directory_record(fh, where, limits)
        try:
            zf = stack.enter_context(zipfile.ZipFile(fh))
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise PackageError(f"{where}: corrupt or truncated zip archive: {exc}") from None
        entries = _check_entries(zf, where, limits)
        _check_layout(fh, entries, cd_start, where)
        manifest = _read_manifest(zf, entries, where)
        staging_dir.mkdir(parents=True)
        try:
            _extract(zf, entries, staging_dir, limits, where, durable)
        except BaseException:
            shutil.rmtree(staging_dir, ignore_errors=True)
            raise
    return manifest


def _check_directory_record(fh: BinaryIO, where: str, limits: PackageLimits) -> int:
    """Find the end record; bound the entry count; return where the central directory starts."""
    size = fh.seek(0, os.SEEK_END)
    fh.seek(0)
    head = fh.read(4)
    tail_len = min(size, _EOCD.size + 65535)
    fh.seek(size - tail_len)
    tail = fh.read(tail_len)
    pos = tail.rfind(b"PK\x05\x06")
    if pos < 0 or pos + _EOCD.size > len(tail):
        if size == 0:
            raise PackageError(f"{where}: empty file, not a zip archive")
        if head == b"PK\x03\x04":
            raise PackageError(f"{where}: truncated zip archive (no end of central directory)")
        raise PackageError(f"{where}: not a zip archive")
    record_at = size - tail_len + pos
    _, _, _, _, count, cd_size, _, _ = _EOCD.unpack_from(tail, pos)
    if count == 0xFFFF or cd_size == 0xFFFFFFFF:  # zip64: the real numbers are elsewhere
        loc_at = record_at - _EOCD64_LOCATOR.size
        fh.seek(max(loc_at, 0))
        loc = fh.read(_EOCD64_LOCATOR.size)
        if loc_at < 0 or len(loc) < _EOCD64_LOCATOR.size or loc[:4] != b"PK\x06\x07":
            raise PackageError(f"{where}: corrupt zip64 end record")
        record_at = loc_at - _EOCD64.size
        fh.seek(max(record_at, 0))
        rec = fh.read(_EOCD64.size)
        if record_at < 0 or len(rec) < _EOCD64.size or rec[:4] != b"PK\x06\x06":
            raise PackageError(f"{where}: corrupt zip64 end record")
        count, cd_size = _EOCD64.unpack(rec)[7:9]
    if count == 0:
        raise PackageError(f"{where}: empty package (the zip has no entries)")
    if count > limits.max_entries:
        raise PackageError(f"{where}: {count} entries, more than {limits.max_entries}")
    if cd_size > limits.max_entries * _CD_BYTES_PER_ENTRY:
        raise PackageError(f"{where}: central directory of {cd_size} bytes is too large")
    cd_start = record_at - cd_size
    if cd_start < 0:
        raise PackageError(f"{where}: truncated or corrupt zip (central directory out of file)")
    fh.seek(0)
    return int(cd_start)


def _check_entries(zf: zipfile.ZipFile, where: str, limits: PackageLimits) -> list[_Entry]:
    infos = zf.infolist()
    if not infos:
        raise PackageError(f"{where}: empty package (the zip has no entries)")
    if len(infos) > limits.max_entries:
        raise PackageError(f"{where}: {len(infos)} entries, more than {limits.max_entries}")
    entries: list[_Entry] = []
    files: set[str] = set()
    dirs: set[str] = set()
    total = 0
    for info in infos:
        entry = _check_entry(info, where, limits)
        if entry.is_dir:
            if entry.name in files:
                raise PackageError(f"{where}: entry {info.orig_filename!r}: duplicate name")
            dirs.add(entry.name)
        else:
            if entry.name in files or entry.name in dirs:
                raise PackageError(f"{where}: entry {info.orig_filename!r}: duplicate name")
            files.add(entry.name)
            total += info.file_size
            if total > limits.max_total_bytes:
                raise PackageError(f"{where}: entry {info.orig_filename!r}: total uncompressed "
                                   f"size exceeds {limits.max_total_bytes} bytes")
        parts = entry.name.split("/")
        for i in range(1, len(parts)):  # every parent must be a folder, never a file
            parent = "/".join(parts[:i])
            if parent in files:
                raise PackageError(f"{where}: entry {info.orig_filename!r}: {parent!r} is a file")
            dirs.add(parent)
        entries.append(entry)
    return entries


def _check_entry(info: zipfile.ZipInfo, where: str, limits: PackageLimits) -> _Entry:
    raw = info.orig_filename  # zipfile cuts ``filename`` at a NUL; the original keeps it
    label = f"{where}: entry {raw!r}"
    if "\x00" in raw:
        raise PackageError(f"{label}: NUL in name")
    if raw.startswith(("/", "\\")):
        raise PackageError(f"{label}: absolute path")
    if _DRIVE.match(raw):
        raise PackageError(f"{label}: drive path")
    parts = [p for p in raw.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PackageError(f"{label}: path leaves the package ('..')")
    if "\\" in raw:
        raise PackageError(f"{label}: backslash in name")
    if not parts:
        raise PackageError(f"{label}: empty name")
    if len(raw) > _MAX_NAME or any(len(p.encode()) > _MAX_COMPONENT for p in parts):
        raise PackageError(f"{label}: name too long")
    if info.flag_bits & 0x1:
        raise PackageError(f"{label}: encrypted entries are not supported")
    if info.compress_type not in _SUPPORTED_COMPRESSION:
        raise PackageError(f"{label}: unsupported compression method {info.compress_type}")
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    is_dir = raw.endswith("/") or kind == stat.S_IFDIR
    if kind == stat.S_IFLNK:
        raise PackageError(f"{label}: symlink entries are not allowed")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise PackageError(f"{label}: not a regular file or folder")
    if not is_dir:
        size, packed = info.file_size, info.compress_size
        if size > limits.ratio_min_bytes and size > limits.max_ratio * max(packed, 1):
            raise PackageError(f"{label}: compression ratio {size // max(packed, 1)}:1 exceeds "
                               f"{limits.max_ratio}:1 (zip bomb?)")
    executable = info.create_system == 3 and bool(mode & 0o111)
    return _Entry(info, "/".join(parts), is_dir, 0o755 if executable or is_dir else 0o644)


def _check_layout(fh: BinaryIO, entries: list[_Entry], cd_start: int, where: str) -> None:
    """Each entry's local header and data must lie inside the file and overlap no other.

    Overlapping entries (many central records pointing at one compressed stream) are
    how the "better zip bomb" multiplies its output past any per-entry ratio.
    """
    spans: list[tuple[int, int, str]] = []
    names: list[tuple[zipfile.ZipInfo, bytes]] = []
    for entry in entries:
        info = entry.info
        start = info.header_offset
        label = f"{where}: entry {info.orig_filename!r}"
        if start < 0 or start + _LOCAL_HEADER.size > cd_start:
            raise PackageError(f"{label}: local header outside the archive (truncated?)")
        fh.seek(start)
        fields = _LOCAL_HEADER.unpack(fh.read(_LOCAL_HEADER.size))
        if fields[0] != b"PK\x03\x04":
            raise PackageError(f"{label}: bad local header (corrupt or overlapping entry)")
        name_len, extra_len = fields[-2], fields[-1]
        names.append((info, fh.read(name_len)))
        end = start + _LOCAL_HEADER.size + name_len + extra_len + info.compress_size
        if end > cd_start:
            raise PackageError(f"{label}: data runs past the end of the archive (truncated?)")
        spans.append((start, end, info.orig_filename))
    spans.sort()
    # Overlap first: entries sharing a header also disagree on names, and the
    # overlap is the more telling message.
    for (_, prev_end, prev), (start, _, other) in itertools.pairwise(spans):
        if start < prev_end:
            raise PackageError(f"{where}: entries {prev!r} and {other!r} overlap in the archive "
                               "(zip bomb?)")
    for info, raw_name in names:
        encoding = "utf-8" if info.flag_bits & 0x800 else "cp437"
        if raw_name.decode(encoding, "replace") != info.orig_filename:
            raise PackageError(f"{where}: entry {info.orig_filename!r}: local header names a "
                               "different file")


def _read_manifest(zf: zipfile.ZipFile, entries: list[_Entry], where: str) -> AppManifest:
    by_name = {e.name: e for e in entries if not e.is_dir}
    entry = by_name.get(MANIFEST_NAME)
    if entry is None:
        nested = sorted(n for n in by_name if n.endswith("/" + MANIFEST_NAME))
        hint = f" (found {nested[0]}; pack the folder's contents, not the folder)" if nested else ""
        raise PackageError(f"{where}: no {MANIFEST_NAME} at the top level{hint}",
                           {"key": "manifest"})
    if entry.info.file_size > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{where}: {MANIFEST_NAME} is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        with zf.open(entry.info) as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
    except Exception as exc:  # decompressors raise many types on hostile data
        raise PackageError(f"{where}: entry {MANIFEST_NAME!r}: cannot read: {exc}") from None
    manifest = parse_manifest(raw, f"{where}:{MANIFEST_NAME}")
    _check_entry_file(set(by_name), manifest, where)
    return manifest


def _extract(zf: zipfile.ZipFile, entries: list[_Entry], staging: Path, limits: PackageLimits,
             where: str, durable: bool) -> None:
    root = staging.resolve()
    total = 0
    for entry in sorted(entries, key=lambda e: e.name):
        dest = root / entry.name
        # Names were validated; this is the belt to those braces.
        if not dest.resolve().is_relative_to(root):
            raise PackageError(f"{where}: entry {entry.info.orig_filename!r}: leaves the package")
        if entry.is_dir:
            dest.mkdir(parents=True, exist_ok=True)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        total = _extract_file(zf, entry, dest, total, limits, where, durable)


def _extract_file(zf: zipfile.ZipFile, entry: _Entry, dest: Path, total: int,
                  limits: PackageLimits, where: str, durable: bool) -> int:
    """Stream one entry to disk, counting real output bytes; returns the new running total."""
    info = entry.info
    label = f"{where}: entry {info.orig_filename!r}"
    written = 0
    try:
        with zf.open(info) as src, _create(dest, entry.mode) as dst:
            while chunk := src.read(_CHUNK):
                written += len(chunk)
                total += len(chunk)
                # The header's sizes are claims; these checks use what really came out.
                if written > info.file_size:
                    raise PackageError(f"{label}: more data than its header declares")
                if total > limits.max_total_bytes:
                    raise PackageError(f"{label}: total uncompressed size exceeds "
                                       f"{limits.max_total_bytes} bytes")
                if (written > limits.ratio_min_bytes
                        and written > limits.max_ratio * max(info.compress_size, 1)):
                    raise PackageError(f"{label}: compression ratio exceeds {limits.max_ratio}:1")
                dst.write(chunk)
            if durable:
                dst.flush()
                os.fsync(dst.fileno())
    except PackageError:
        raise
    except Exception as exc:  # zlib/bz2/lzma/zipfile raise many types on hostile data
        raise PackageError(f"{label}: cannot extract: {exc}") from None
    return total


# ---------------------------------------------------------------------------- helpers

def _create(path: Path, mode: int) -> BinaryIO:
    # O_EXCL | O_NOFOLLOW: never write through something that appeared in the meantime.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    os.fchmod(fd, mode)  # the umask must not strip the executable bit of a native entry
    return os.fdopen(fd, "wb")


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable (a no-op where dirs cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def is_package_path(path: str | os.PathLike[str]) -> bool:
    name = os.fspath(path).lower()
    return name.endswith((*PACKAGE_SUFFIXES, ".zip"))


__all__ = [
    "DEFAULT_LIMITS",
    "PACKAGE_SUFFIXES",
    "AppSource",
    "PackageLimits",
    "collect_files",
    "copy_folder",
    "fsync_dir",
    "is_package_path",
    "open_source",
    "pack",
    "safe_extract",
]
