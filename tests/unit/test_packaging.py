"""Packing and opening app packages, and the malicious-package suite (no Ray)."""

from __future__ import annotations

import json
import os
import stat
import struct
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from estarter.errors import EstarterError, ManifestError, PackageError
from estarter.packaging import PackageLimits, open_source, pack, safe_extract

MANIFEST = {"id": "demo", "version": "1.0.0", "runtime": "python", "entry": "main.py"}
MANIFEST_BYTES = json.dumps(MANIFEST).encode()


def make_app(folder: Path, manifest: dict[str, object] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(manifest or MANIFEST))
    (folder / "main.py").write_text("print('hello')\n")
    return folder


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# ---------------------------------------------------------------- raw zip builder


@dataclass
class Raw:
    """One entry of a hand-built zip: every field a hostile archive could lie about."""

    name: bytes
    data: bytes = b"x"
    method: int = 0  # 0 stored, 8 deflate (data then is raw deflate)
    usize: int | None = None
    crc: int | None = None
    flags: int = 0
    mode: int = stat.S_IFREG | 0o644


def deflate(data: bytes) -> bytes:
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    return co.compress(data) + co.flush()


def local_header(e: Raw, plain: bytes) -> bytes:
    crc = zlib.crc32(plain) if e.crc is None else e.crc
    usize = len(plain) if e.usize is None else e.usize
    return struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, e.flags, e.method, 0, 0x21, crc,
                       len(e.data), usize, len(e.name), 0) + e.name


def raw_zip(entries: list[Raw], plains: list[bytes] | None = None,
            extra_records: list[tuple[Raw, bytes, int]] | None = None) -> bytes:
    """A zip laid out by hand: local headers, central directory, end record.

    ``extra_records`` are central records pointing at offsets of the caller's choice.
    """
    plains = plains or [e.data for e in entries]
    out = bytearray()
    records: list[tuple[Raw, bytes, int]] = []
    for e, plain in zip(entries, plains, strict=True):
        records.append((e, plain, len(out)))
        out += local_header(e, plain) + e.data
    records += extra_records or []
    cd_start = len(out)
    for e, plain, offset in records:
        crc = zlib.crc32(plain) if e.crc is None else e.crc
        usize = len(plain) if e.usize is None else e.usize
        out += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", (3 << 8) | 20, 20, e.flags, e.method,
                           0, 0x21, crc, len(e.data), usize, len(e.name), 0, 0, 0, 0,
                           e.mode << 16, offset) + e.name
    n = len(records)
    out += struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, n, n, len(out) - cd_start, cd_start, 0)
    return bytes(out)


def with_manifest(*entries: Raw) -> list[Raw]:
    return [Raw(b"manifest.json", MANIFEST_BYTES), Raw(b"main.py", b"print(1)\n"), *entries]


def overlapping_same_header() -> bytes:
    # Two central records pointing at one local header: the same bytes counted twice.
    entries = with_manifest(Raw(b"a.txt", b"A" * 100))
    a = entries[-1]
    offset = sum(len(local_header(e, e.data)) + len(e.data) for e in entries[:-1])
    return raw_zip(entries, extra_records=[(Raw(b"b.txt", a.data), a.data, offset)])


def overlapping_nested() -> bytes:
    # Fifield's "better zip bomb" shape: entry b's header and data sit inside a's data.
    inner = Raw(b"b.txt", b"B" * 50)
    inner_bytes = local_header(inner, inner.data) + inner.data
    head = with_manifest()
    head_len = sum(len(local_header(e, e.data)) + len(e.data) for e in head)
    outer = Raw(b"a.txt", inner_bytes)
    inner_at = head_len + len(local_header(outer, outer.data))
    return raw_zip([*head, outer], extra_records=[(inner, inner.data, inner_at)])


def lying_size() -> bytes:
    # The header claims 100 bytes; the stream inflates to 2 MiB.
    plain = b"\0" * (2 * 1024 * 1024)
    bomb = Raw(b"bomb.bin", deflate(plain), method=8, usize=100, crc=zlib.crc32(plain))
    return raw_zip(with_manifest(bomb), [MANIFEST_BYTES, b"print(1)\n", plain])


def zip_bomb() -> bytes:
    plain = b"\0" * (4 * 1024 * 1024)
    return raw_zip(with_manifest(Raw(b"bomb.bin", deflate(plain), method=8)),
                   [MANIFEST_BYTES, b"print(1)\n", plain])


def nul_name() -> bytes:
    return raw_zip(with_manifest(Raw(b"evil.txt\x00.png")))


def zf_bytes(tmp: Path, files: dict[str, bytes]) -> bytes:
    path = tmp / "built.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    data = path.read_bytes()
    path.unlink()
    return data


def valid_zip(tmp: Path) -> bytes:
    return zf_bytes(tmp, {"manifest.json": MANIFEST_BYTES, "main.py": b"print(1)\n"})


SMALL = PackageLimits(max_entries=5, max_total_bytes=1000)

# (id, builder(tmp) -> archive bytes, limits, message fragment)
CASES = [
    ("slip-dotdot", lambda t: raw_zip(with_manifest(Raw(b"../evil.txt"))), None, "leaves"),
    ("slip-nested", lambda t: raw_zip(with_manifest(Raw(b"a/../../evil.txt"))), None, "leaves"),
    ("slip-backslash", lambda t: raw_zip(with_manifest(Raw(b"..\\evil.txt"))), None, "leaves"),
    ("slip-dot-prefix", lambda t: raw_zip(with_manifest(Raw(b"./../evil.txt"))), None, "leaves"),
    ("slip-deep", lambda t: raw_zip(with_manifest(Raw(b"a/b/../../../evil"))), None, "leaves"),
    ("absolute", lambda t: raw_zip(with_manifest(Raw(b"/tmp/evil.txt"))), None, "absolute"),
    ("drive-backslash", lambda t: raw_zip(with_manifest(Raw(b"C:\\evil.txt"))), None, "drive"),
    ("drive-relative", lambda t: raw_zip(with_manifest(Raw(b"C:evil.txt"))), None, "drive"),
    ("backslash", lambda t: raw_zip(with_manifest(Raw(b"a\\b.txt"))), None, "backslash"),
    ("nul-name", lambda t: nul_name(), None, "NUL"),
    ("symlink", lambda t: raw_zip(with_manifest(
        Raw(b"link", b"/etc/passwd", mode=stat.S_IFLNK | 0o777))), None, "symlink"),
    ("fifo", lambda t: raw_zip(with_manifest(Raw(b"pipe", mode=stat.S_IFIFO | 0o644))), None,
     "regular"),
    ("entry-missing", lambda t: raw_zip([
        Raw(b"manifest.json", json.dumps({**MANIFEST, "entry": "missing.py"}).encode()),
        Raw(b"main.py")]), None, "not a file in the package"),
    ("entry-outside", lambda t: raw_zip([
        Raw(b"manifest.json", json.dumps({**MANIFEST, "entry": "../x"}).encode()),
        Raw(b"main.py")]), None, "entry"),
    ("entry-is-dir", lambda t: raw_zip([
        Raw(b"manifest.json", json.dumps({**MANIFEST, "entry": "bin"}).encode()),
        Raw(b"bin/", b"", mode=stat.S_IFDIR | 0o755), Raw(b"bin/x")]), None,
     "not a file in the package"),
    ("zip-bomb-ratio", lambda t: zip_bomb(), None, "ratio"),
    ("lying-size", lambda t: lying_size(), None, "bomb.bin"),
    ("too-many-entries", lambda t: raw_zip(with_manifest(
        *[Raw(f"f{i}".encode()) for i in range(4)])), SMALL, "entries"),
    ("total-size", lambda t: raw_zip(with_manifest(Raw(b"big", b"x" * 1200))), SMALL,
     "total uncompressed"),
    ("overlap-shared-header", lambda t: overlapping_same_header(), None, "overlap"),
    ("overlap-nested", lambda t: overlapping_nested(), None, "overlap"),
    ("duplicate", lambda t: raw_zip(with_manifest(Raw(b"main.py"))), None, "duplicate"),
    ("duplicate-normalised", lambda t: raw_zip(with_manifest(Raw(b"a/b"), Raw(b"a//./b"))), None,
     "duplicate"),
    ("file-and-folder", lambda t: raw_zip(with_manifest(Raw(b"a"), Raw(b"a/b"))), None,
     "is a file"),
    ("encrypted", lambda t: raw_zip(with_manifest(Raw(b"secret", flags=0x1))), None, "encrypted"),
    ("bad-manifest-key", lambda t: raw_zip([
        Raw(b"manifest.json", json.dumps({**MANIFEST, "bogus": 1}).encode()), Raw(b"main.py")]),
     None, "bogus"),
    ("bad-manifest-json", lambda t: raw_zip([Raw(b"manifest.json", b"{nope"), Raw(b"main.py")]),
     None, "not valid JSON"),
    ("no-manifest", lambda t: raw_zip([Raw(b"main.py")]), None, "no manifest.json"),
    ("nested-manifest", lambda t: raw_zip([Raw(b"demo/manifest.json", MANIFEST_BYTES),
                                           Raw(b"demo/main.py")]), None, "found demo/manifest"),
    ("not-a-zip", lambda t: b"this is not a zip file at all" * 10, None, "not a zip"),
    ("empty-file", lambda t: b"", None, "empty file"),
    ("empty-zip", lambda t: zf_bytes(t, {}), None, "empty package"),
    ("truncated-half", lambda t: valid_zip(t)[: len(valid_zip(t)) // 2], None, "truncated"),
    ("truncated-tail", lambda t: valid_zip(t)[:-10], None, "truncated"),
    ("truncated-data", lambda t: valid_zip(t)[:40] + valid_zip(t)[-120:], None, "zip"),
]


@pytest.mark.parametrize(("build", "limits", "fragment"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_malicious_package_is_refused(tmp_path: Path, build, limits, fragment) -> None:
    archive = tmp_path / "bad.app.zip"
    archive.write_bytes(build(tmp_path))
    staging = tmp_path / "box" / "inner" / "staging"
    staging.parent.mkdir(parents=True)
    before = snapshot(tmp_path)
    with pytest.raises((PackageError, ManifestError)) as info:
        safe_extract(archive, staging, limits or PackageLimits())
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message
    assert not staging.exists()
    assert snapshot(tmp_path) == before


def test_every_named_entry_appears_in_its_message(tmp_path: Path) -> None:
    archive = tmp_path / "bad.app.zip"
    archive.write_bytes(raw_zip(with_manifest(Raw(b"a/../../evil.txt"))))
    with pytest.raises(PackageError, match=r"bad\.app\.zip: entry 'a/\.\./\.\./evil\.txt'"):
        safe_extract(archive, tmp_path / "staging")


def test_open_source_cleans_its_temporary_folder_on_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    temp_root = tmp_path / "tmp"
    temp_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp_root))
    archive = tmp_path / "bad.eapp"
    archive.write_bytes(zip_bomb())
    with pytest.raises(PackageError, match="ratio"):
        open_source(archive)
    assert list(temp_root.iterdir()) == []


def test_staging_that_exists_is_refused_untouched(tmp_path: Path) -> None:
    archive = tmp_path / "ok.app.zip"
    archive.write_bytes(valid_zip(tmp_path))
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "keep").write_text("mine")
    with pytest.raises(FileExistsError):
        safe_extract(archive, staging)
    assert (staging / "keep").read_text() == "mine"


# ---------------------------------------------------------------- pack / open


def test_pack_open_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_app(tmp_path / "src")
    (app / "sub").mkdir()
    (app / "sub" / "data.txt").write_text("data")
    (app / "tool").write_text("#!/bin/sh\n")
    (app / "tool").chmod(0o755)
    (app / "alias.py").symlink_to(app / "main.py")  # inside: stored as a regular file
    for junk in ("__pycache__", ".git"):
        (app / junk).mkdir()
        (app / junk / "x").write_text("junk")
    monkeypatch.chdir(tmp_path)

    out = pack(app)
    assert out == tmp_path / "demo.app.zip"
    with zipfile.ZipFile(out) as zf:
        infos = zf.infolist()
    names = [i.filename for i in infos]
    assert names == sorted(names) == ["alias.py", "main.py", "manifest.json", "sub/data.txt",
                                      "tool"]
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert not list(tmp_path.glob(".demo.app.zip.*"))  # no temporary left behind

    with open_source(out) as source:
        assert source.is_package
        assert source.manifest.id == "demo"
        assert source.entry_path.read_text() == "print('hello')\n"
        assert (source.root / "sub" / "data.txt").read_text() == "data"
        assert (source.root / "alias.py").read_text() == "print('hello')\n"
        assert not (source.root / "alias.py").is_symlink()
        assert os.stat(source.root / "tool").st_mode & 0o111
        assert not os.stat(source.root / "main.py").st_mode & 0o111
        root = source.cleanup_dir
        assert root is not None and root.exists()
    assert not root.exists()
    source.close()  # idempotent


def test_pack_is_deterministic(tmp_path: Path) -> None:
    app = make_app(tmp_path / "src")
    first = pack(app, tmp_path / "one.app.zip").read_bytes()
    os.utime(app / "main.py", (1_700_000_000, 1_700_000_000))
    second = pack(app, tmp_path / "two.app.zip").read_bytes()
    assert first == second


def test_pack_into_a_folder_and_as_eapp(tmp_path: Path) -> None:
    app = make_app(tmp_path / "src")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = pack(app, out_dir)
    assert out == out_dir / "demo.app.zip"
    eapp = out.rename(out_dir / "demo.eapp")
    with open_source(eapp) as source:
        assert source.manifest.id == "demo"


def test_pack_inside_the_app_folder_skips_its_own_output(tmp_path: Path) -> None:
    app = make_app(tmp_path / "src")
    pack(app, app / "demo.app.zip")
    out = pack(app, app / "demo.app.zip")
    with zipfile.ZipFile(out) as zf:
        assert zf.namelist() == ["main.py", "manifest.json"]


def test_pack_refuses_symlink_leaving_the_folder(tmp_path: Path) -> None:
    app = make_app(tmp_path / "src")
    (tmp_path / "secret").write_text("secret")
    (app / "leak").symlink_to(tmp_path / "secret")
    with pytest.raises(PackageError, match="leak: symlink leaves the app folder"):
        pack(app, tmp_path / "out.app.zip")
    assert not (tmp_path / "out.app.zip").exists()


def test_pack_refuses_folder_symlink_leaving_the_folder(tmp_path: Path) -> None:
    app = make_app(tmp_path / "src")
    (app / "etc").symlink_to("/etc")
    with pytest.raises(PackageError, match="symlink leaves"):
        pack(app, tmp_path / "out.app.zip")


def test_pack_refuses_dangling_symlink(tmp_path: Path) -> None:
    app = make_app(tmp_path / "src")
    (app / "gone").symlink_to(app / "nothing")
    with pytest.raises(PackageError, match="dangling"):
        pack(app, tmp_path / "out.app.zip")


def test_pack_refuses_bad_manifest_and_missing_entry(tmp_path: Path) -> None:
    app = make_app(tmp_path / "bad", {**MANIFEST, "memoryLimitMb": -1})
    with pytest.raises(ManifestError, match="memoryLimitMb"):
        pack(app, tmp_path / "x.app.zip")
    app = make_app(tmp_path / "noentry", {**MANIFEST, "entry": "nope.py"})
    with pytest.raises(PackageError, match=r"'nope\.py' is not a file"):
        pack(app, tmp_path / "x.app.zip")
    with pytest.raises(ManifestError, match=r"no manifest\.json"):
        pack(tmp_path, tmp_path / "x.app.zip")


def test_open_source_folder_is_used_in_place(tmp_path: Path) -> None:
    app = make_app(tmp_path / "src")
    with open_source(app) as source:
        assert source.root == app and not source.is_package and source.cleanup_dir is None
    assert app.exists()


def test_open_source_errors(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="no such app folder or package"):
        open_source(tmp_path / "missing.app.zip")
    app = make_app(tmp_path / "src", {**MANIFEST, "entry": "nope.py"})
    with pytest.raises(PackageError, match="not a file in the folder"):
        open_source(app)


def test_limits_count_real_bytes_not_header_claims(tmp_path: Path) -> None:
    # The header says 100 bytes; extraction must not produce 2 MiB (CRC then fails).
    archive = tmp_path / "lie.app.zip"
    archive.write_bytes(lying_size())
    staging = tmp_path / "staging"
    with pytest.raises(PackageError, match=r"bomb\.bin"):
        safe_extract(archive, staging)
    assert not staging.exists()


def test_many_small_files_within_limits_extract(tmp_path: Path) -> None:
    files = {"manifest.json": MANIFEST_BYTES, "main.py": b"print(1)\n"}
    files.update({f"d/{i}.txt": str(i).encode() for i in range(200)})
    archive = tmp_path / "ok.app.zip"
    archive.write_bytes(zf_bytes(tmp_path, files))
    manifest = safe_extract(archive, tmp_path / "staging")
    assert manifest.id == "demo"
    assert (tmp_path / "staging" / "d" / "199.txt").read_text() == "199"


def test_errors_share_the_root(tmp_path: Path) -> None:
    archive = tmp_path / "x.app.zip"
    archive.write_bytes(b"nope")
    with pytest.raises(EstarterError):
        safe_extract(archive, tmp_path / "staging")
