"""The VFS: hostile paths and symlinks stay inside, writes are atomic, quotas hold."""

from __future__ import annotations

import base64
import functools
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from estarter.errors import EstarterError, InvalidParams, NotFound, PermissionDenied, QuotaExceeded
from estarter.kernel.vfs import MAX_BODY_BYTES, Vfs, split_path

APP = "app1"
MIB = 1024 * 1024


@pytest.fixture
def home(tmp_path: Path) -> Path:
    root = tmp_path / "home"
    (root / "vfs" / "appdata" / APP).mkdir(parents=True)
    (root / "vfs" / "appdata" / "app1-evil").mkdir(parents=True)
    (root / "vfs" / "appdata" / "app1-evil" / "secret").write_text("evil")
    (root / "vfs" / "appdata" / "app2").mkdir(parents=True)
    (root / "vfs" / "appdata" / "app2" / "secret").write_text("app2")
    (root / "vfs" / "system").mkdir(parents=True)
    (root / "vfs" / "system" / "readme").write_text("system")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("host")
    return root


@pytest.fixture
def vfs(home: Path) -> Vfs:
    return Vfs(home, lambda app_id: 10 * MIB)


def outside_untouched(home: Path) -> None:
    outside = home.parent / "outside"
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert (outside / "secret").read_text() == "host"
    assert (home / "vfs" / "appdata" / "app1-evil" / "secret").read_text() == "evil"
    assert (home / "vfs" / "appdata" / "app2" / "secret").read_text() == "app2"


# -- hostile path strings ---------------------------------------------------------

HOSTILE_PATHS = [
    "/appdata/../app2/secret",
    "/appdata/../../appdata/app2/secret",
    "/appdata/x/../../app2/secret",
    "../app2/secret",
    "/appdata/..",
    "/../../outside/secret",
    "/etc/passwd",
    "/tmp/x",
    "/appdata/a\0b",
    "/appdata\\..\\app2\\secret",
    "..\\app2\\secret",
    "/APPDATA/x",
    "/appdata1/x",
    "/app1-evil/secret",
    "/vfs/appdata/app1-evil/secret",
    "",
    "/",
    "//",
    "/appdata/" + "a" * 300,
    "/" + "x/" * 3000,
    "/shared/../appdata/app2/secret",
    "/system/../appdata/app2/secret",
    "/appdata/./../app2/secret",
]


@pytest.mark.parametrize("path", HOSTILE_PATHS)
@pytest.mark.parametrize("op", ["read", "write", "delete", "mkdir", "stat", "list"])
def test_hostile_path_is_refused(vfs: Vfs, home: Path, path: str, op: str) -> None:
    calls: dict[str, Callable[[], object]] = {
        "read": lambda: vfs.read(APP, path),
        "write": lambda: vfs.write(APP, path, text="pwned"),
        "delete": lambda: vfs.delete(APP, path),
        "mkdir": lambda: vfs.mkdir(APP, path),
        "stat": lambda: vfs.stat(APP, path),
        "list": lambda: vfs.list(APP, path),
    }
    with pytest.raises((InvalidParams, PermissionDenied, NotFound)):
        result = calls[op]()
        # "/" style paths that name no zone must fail; anything that passed is a bug
        pytest.fail(f"{op} {path!r} succeeded: {result!r}")
    outside_untouched(home)


def test_non_string_path_is_invalid(vfs: Vfs) -> None:
    for bad in (None, 3, ["appdata"], b"/appdata/x"):
        with pytest.raises(InvalidParams):
            split_path(bad)


def test_look_alike_app_folder_is_not_reachable(vfs: Vfs, home: Path) -> None:
    vfs.write(APP, "/appdata/f", text="mine")
    assert (home / "vfs" / "appdata" / APP / "f").read_text() == "mine"
    assert not (home / "vfs" / "appdata" / "app1-evil" / "f").exists()
    assert [i["name"] for i in vfs.list(APP, "/appdata")] == ["f"]


# -- symlinks ---------------------------------------------------------------------

def _area(home: Path) -> Path:
    return home / "vfs" / "appdata" / APP


SYMLINK_CASES: list[tuple[str, Callable[[Path, Path], None], str]] = [
    ("file link out", lambda a, o: os.symlink(o / "secret", a / "link"), "/appdata/link"),
    ("dir link out", lambda a, o: os.symlink(o, a / "d"), "/appdata/d/secret"),
    ("dir link to sibling app", lambda a, o: os.symlink(a.parent / "app2", a / "d"),
     "/appdata/d/secret"),
    ("relative link out", lambda a, o: os.symlink("../app2/secret", a / "rel"),
     "/appdata/rel"),
    ("chain of links", lambda a, o: (os.symlink(o / "secret", a / "l2"),
                                     os.symlink("l2", a / "l1")), "/appdata/l1"),
    ("link inside pointing inside", lambda a, o: ((a / "real").write_text("in"),
                                                  os.symlink("real", a / "alias")),
     "/appdata/alias"),
    ("nested dir link", lambda a, o: ((a / "sub").mkdir(),
                                      os.symlink(o, a / "sub" / "x")), "/appdata/sub/x/secret"),
    ("dangling link", lambda a, o: os.symlink(o / "nothing", a / "dangle"), "/appdata/dangle"),
    ("link to root", lambda a, o: os.symlink("/", a / "root"), "/appdata/root/etc/passwd"),
]


@pytest.mark.parametrize("name,make,path", SYMLINK_CASES, ids=[c[0] for c in SYMLINK_CASES])
@pytest.mark.parametrize("op", ["read", "write", "append", "stat"])
def test_symlinks_are_never_followed(vfs: Vfs, home: Path, name: str,
                                     make: Callable[[Path, Path], None], path: str,
                                     op: str) -> None:
    area = _area(home)
    make(area, home.parent / "outside")
    calls: dict[str, Callable[[], object]] = {
        "read": lambda: vfs.read(APP, path),
        "write": lambda: vfs.write(APP, path, text="pwned"),
        "append": lambda: vfs.write(APP, path, text="pwned", append=True),
        "stat": lambda: vfs.stat(APP, path),
    }
    try:
        calls[op]()
    except (PermissionDenied, NotFound, InvalidParams):
        pass
    else:
        # A write may replace the link itself (rename does not follow); it must
        # then be a regular file inside the area and nothing outside changed.
        assert op in ("write", "append"), f"{op} through {name} succeeded"
        last = area / path.removeprefix("/appdata/")
        assert last.is_file() and not last.is_symlink()
    outside_untouched(home)


def test_delete_of_a_link_removes_the_link_only(vfs: Vfs, home: Path) -> None:
    os.symlink(home.parent / "outside", _area(home) / "d")
    assert vfs.delete(APP, "/appdata/d") == {"deleted": True}
    outside_untouched(home)


def test_delete_folder_with_link_inside_keeps_target(vfs: Vfs, home: Path) -> None:
    sub = _area(home) / "sub"
    sub.mkdir()
    os.symlink(home.parent / "outside", sub / "out")
    assert vfs.delete(APP, "/appdata/sub") == {"deleted": True}
    assert not sub.exists()
    outside_untouched(home)


def test_zone_folder_swapped_for_link_is_refused(vfs: Vfs, home: Path) -> None:
    area = home / "vfs" / "cache" / APP
    area.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(home.parent / "outside", area)
    with pytest.raises(PermissionDenied):
        vfs.read(APP, "/cache/secret")
    outside_untouched(home)


def test_symlink_swapped_in_during_writes_never_escapes(vfs: Vfs, home: Path) -> None:
    """A thread flips /appdata/d between a folder and a link to the outside while
    writes go on: every write lands inside or fails; nothing appears outside."""
    area = _area(home)
    outside = home.parent / "outside"
    stop = threading.Event()
    swaps = 0

    def swapper() -> None:
        nonlocal swaps
        while not stop.is_set() and swaps < 5000:
            # folder d -> aside, a link to the outside in its place, then the link goes
            # (the writer recreates d as a folder when it finds none).
            aside = area / f"old{swaps}"
            for step in (functools.partial(os.rename, area / "d", aside),
                         lambda: os.symlink(outside, area / "d"),
                         lambda: threading.Event().wait(0.0005),
                         lambda: os.unlink(area / "d")):
                try:
                    step()
                except OSError:
                    pass
            swaps += 1

    (area / "d").mkdir()
    thread = threading.Thread(target=swapper, daemon=True)
    thread.start()
    ok = refused = 0
    try:
        for i in range(600):
            try:
                vfs.write(APP, f"/appdata/d/f{i % 5}", text="x" * 100)
                ok += 1
            except (PermissionDenied, NotFound, InvalidParams, FileNotFoundError,
                    FileExistsError, OSError):
                refused += 1
    finally:
        stop.set()
        thread.join(10)
    assert swaps > 10 and refused > 0
    outside_untouched(home)


# -- bodies, atomicity, quota -----------------------------------------------------

def test_text_and_base64_round_trip(vfs: Vfs) -> None:
    assert vfs.write(APP, "/appdata/a/b/t.txt", text="héllo") == {
        "path": "/appdata/a/b/t.txt", "written": 6}
    assert vfs.read(APP, "/appdata/a/b/t.txt")["text"] == "héllo"
    blob = bytes(range(256))
    vfs.write(APP, "/cache/blob", data=base64.b64encode(blob).decode())
    got = vfs.read(APP, "/cache/blob", encoding="base64")
    assert base64.b64decode(got["data"]) == blob and got["size"] == 256
    with pytest.raises(InvalidParams, match="base64"):
        vfs.read(APP, "/cache/blob")  # not UTF-8
    assert vfs.write(APP, "/appdata/a/b/t.txt", text="!", append=True)["written"] == 1
    assert vfs.read(APP, "/appdata/a/b/t.txt")["text"] == "héllo!"
    assert vfs.read(APP, "/appdata/a/b/t.txt", offset=1, length=2, encoding="base64")[
        "data"] == base64.b64encode("é".encode()).decode()


def test_list_stat_exists_mkdir_delete(vfs: Vfs) -> None:
    assert vfs.mkdir(APP, "/appdata/x/y") == {"created": True}
    assert vfs.mkdir(APP, "/appdata/x/y") == {"created": False}
    vfs.write(APP, "/appdata/x/f", text="abc")
    assert [(i["name"], i["isDir"], i["size"]) for i in vfs.list(APP, "/appdata/x")] == [
        ("f", False, 3), ("y", True, vfs.stat(APP, "/appdata/x/y")["size"])]
    assert vfs.stat(APP, "/appdata/x/f")["size"] == 3
    assert vfs.exists(APP, "/appdata/x/f") == {"exists": True}
    assert vfs.exists(APP, "/appdata/nope") == {"exists": False}
    assert vfs.delete(APP, "/appdata/x") == {"deleted": True}
    assert vfs.delete(APP, "/appdata/x") == {"deleted": False}
    with pytest.raises(NotFound):
        vfs.read(APP, "/appdata/x/f")


def test_system_zone_is_read_only_and_shared_is_shared(vfs: Vfs) -> None:
    assert vfs.read(APP, "/system/readme")["text"] == "system"
    for call in (lambda: vfs.write(APP, "/system/x", text="x"),
                 lambda: vfs.delete(APP, "/system/readme"),
                 lambda: vfs.mkdir(APP, "/system/d")):
        with pytest.raises(PermissionDenied):
            call()
    vfs.write(APP, "/shared/note", text="hi")
    assert vfs.read("app2", "/shared/note")["text"] == "hi"
    with pytest.raises(NotFound):
        vfs.read("app2", "/appdata/t")  # private zones are per app


def test_body_cap_is_a_clear_error(vfs: Vfs) -> None:
    with pytest.raises(InvalidParams, match="at most"):
        vfs.write(APP, "/appdata/big", text="x" * (MAX_BODY_BYTES + 1))
    with pytest.raises(InvalidParams, match="exactly one"):
        vfs.write(APP, "/appdata/big")


def test_reads_of_big_files_go_in_ranges(tmp_path: Path) -> None:
    vfs = Vfs(tmp_path, lambda a: 0)
    chunk = "y" * (MAX_BODY_BYTES // 2)
    for _ in range(3):
        vfs.write(APP, "/temp/big", text=chunk, append=True)
    with pytest.raises(InvalidParams, match="ranges"):
        vfs.read(APP, "/temp/big")
    part = vfs.read(APP, "/temp/big", offset=MAX_BODY_BYTES, length=10)
    assert part["text"] == "y" * 10 and part["size"] == 3 * len(chunk)


def test_disk_quota_is_enforced_on_write(home: Path) -> None:
    vfs = Vfs(home, lambda app_id: 10_000)
    vfs.write(APP, "/appdata/a", text="x" * 6000)
    with pytest.raises(QuotaExceeded) as info:
        vfs.write(APP, "/cache/b", text="x" * 5000)
    assert info.value.code == -32003 and info.value.data["path"] == "/cache/b"
    assert not (home / "vfs" / "cache" / APP / "b").exists()
    vfs.write(APP, "/appdata/a", text="x" * 9000)  # replacing counts the difference
    with pytest.raises(QuotaExceeded):
        vfs.write(APP, "/appdata/a", text="!" * 1001, append=True)
    vfs.delete(APP, "/appdata/a")
    vfs.write(APP, "/cache/b", text="x" * 9999)
    assert vfs.usage(APP) == 9999


def test_quota_counts_files_written_directly(home: Path) -> None:
    (home / "vfs" / "appdata" / APP / "direct").write_bytes(b"x" * 9000)
    vfs = Vfs(home, lambda app_id: 10_000)
    with pytest.raises(QuotaExceeded):
        vfs.write(APP, "/appdata/more", text="x" * 2000)


WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from estarter.kernel.vfs import Vfs
    vfs = Vfs(Path(sys.argv[1]), lambda a: 0)
    print("ready", flush=True)
    i = 0
    while True:
        vfs.write("app1", "/appdata/file", text=("AB"[i % 2]) * (4 * 1024 * 1024))
        i += 1
""")


def test_sigkill_mid_write_leaves_old_or_new(home: Path) -> None:
    target = _area(home) / "file"
    repo = Path(__file__).resolve().parents[2]
    for attempt in range(8):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(home)], cwd=repo,
                                stdout=subprocess.PIPE)
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == b"ready"
            # Let it get into a write (each is ~4 MiB plus two fsyncs).
            threading.Event().wait(0.05 + 0.03 * attempt)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(10)
        if target.exists():
            data = target.read_bytes()
            assert len(data) == 4 * 1024 * 1024
            assert data in (b"A" * len(data), b"B" * len(data))
    # Leftover temp files are hidden from listings.
    assert all(not i["name"].startswith(".estarter") for i in
               Vfs(home, lambda a: 0).list(APP, "/appdata"))


def test_errors_carry_the_path(vfs: Vfs) -> None:
    try:
        vfs.read(APP, "/appdata/missing")
    except EstarterError as exc:
        assert exc.to_dict() == {"code": -32002, "message": exc.message,
                                 "data": {"path": "/appdata/missing"}}
