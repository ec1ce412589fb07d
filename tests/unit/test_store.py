"""The installed-apps store: install, upgrade, uninstall, resolve, and crash safety (no Ray)."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from estarter import store as store_module
from estarter.errors import Busy, NotFound, PackageError
from estarter.manifest import AppManifest
from estarter.packaging import PackageLimits, pack
from estarter.store import STEPS, AppStore

REPO = Path(__file__).resolve().parents[2]


def make_app(folder: Path, version: str = "1.0.0", files: dict[str, str] | None = None,
             app_id: str = "demo") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {"id": app_id, "version": version, "runtime": "python", "entry": "main.py"}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "main.py").write_text(f"print({version!r})\n")
    for name, text in (files or {}).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def v1(tmp_path: Path) -> Path:
    return pack(make_app(tmp_path / "v1", "1.0.0", {"old.txt": "old", "lib/a.py": "a = 1\n"}),
                tmp_path / "demo-1.app.zip")


@pytest.fixture
def v2(tmp_path: Path) -> Path:
    return pack(make_app(tmp_path / "v2", "2.0.0", {"new.txt": "new", "lib/a.py": "a = 2\n"}),
                tmp_path / "demo-2.app.zip")


def test_install_list_get(home: Path, v1: Path, tmp_path: Path) -> None:
    store = AppStore(home)
    assert store.list() == []
    manifest = store.install(v1)
    assert manifest.id == "demo" and manifest.version == "1.0.0"
    store.install(make_app(tmp_path / "other", app_id="other"))  # a folder installs too
    assert [m.id for m in store.list()] == ["demo", "other"]
    got, folder = store.get("demo")
    # each version in a folder of its own: apps/<id>/<version>-<digest>
    assert got == manifest and folder.parent == home / "apps" / "demo"
    assert folder.name.startswith("1.0.0-")
    assert tree(folder) == tree(tmp_path / "v1")
    assert list((home / "staging").iterdir()) == []


def test_get_unknown_and_invalid_ids(home: Path) -> None:
    store = AppStore(home)
    with pytest.raises(NotFound, match="'nope' is not installed"):
        store.get("nope")
    for bad in ("../apps", "..", "", "A", "a/b"):
        with pytest.raises(NotFound):
            store.get(bad)
    with pytest.raises(NotFound):
        store.uninstall("../staging")


def test_upgrade_replaces_the_whole_app(home: Path, v1: Path, v2: Path, tmp_path: Path) -> None:
    store = AppStore(home)
    store.install(v1)
    manifest = store.install(v2)
    assert manifest.version == "2.0.0"
    _, folder = store.get("demo")
    assert tree(folder) == tree(tmp_path / "v2")
    assert not (folder / "old.txt").exists()
    assert [m.version for m in store.list()] == ["2.0.0"]
    assert list((home / "staging").iterdir()) == []


def test_refused_package_installs_nothing(home: Path, v1: Path, tmp_path: Path) -> None:
    store = AppStore(home)
    store.install(v1)
    bad = tmp_path / "bad.app.zip"
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(PackageError, match="truncated"):
        store.install(bad)
    with pytest.raises(PackageError, match="no such"):
        store.install(tmp_path / "missing.app.zip")
    assert tree(store.get("demo")[1]) == tree(tmp_path / "v1")
    assert list((home / "staging").iterdir()) == []


def seed_vfs(home: Path) -> None:
    for zone in ("appdata", "cache", "temp"):
        for app in ("demo", "other"):
            (home / "vfs" / zone / app).mkdir(parents=True)
            (home / "vfs" / zone / app / "f.txt").write_text(zone)
    (home / "vfs" / "shared" / "demo").mkdir(parents=True)  # shared data, not the app's
    (home / "vfs" / "shared" / "demo" / "s.txt").write_text("shared")


def test_uninstall_removes_app_and_data(home: Path, v1: Path) -> None:
    store = AppStore(home)
    store.install(v1)
    seed_vfs(home)
    store.uninstall("demo")
    assert store.list() == []
    with pytest.raises(NotFound):
        store.get("demo")
    for zone in ("appdata", "cache", "temp"):
        assert not (home / "vfs" / zone / "demo").exists()
        assert (home / "vfs" / zone / "other" / "f.txt").exists()
    assert (home / "vfs" / "shared" / "demo" / "s.txt").exists()
    assert list((home / "staging").iterdir()) == []
    with pytest.raises(NotFound):
        store.uninstall("demo")


def test_damaged_app_is_listed_as_skipped_and_can_be_uninstalled(home: Path, v1: Path) -> None:
    store = AppStore(home)
    store.install(v1)
    (store.get("demo")[1] / "manifest.json").write_text("{broken")
    assert store.list() == []
    store.uninstall("demo")
    assert not (home / "apps" / "demo").exists()


def test_uninstall_keep_data(home: Path, v1: Path) -> None:
    store = AppStore(home)
    store.install(v1)
    seed_vfs(home)
    store.uninstall("demo", keep_data=True)
    assert store.list() == []
    assert (home / "vfs" / "appdata" / "demo" / "f.txt").read_text() == "appdata"


def test_resolve(home: Path, v1: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = AppStore(home)
    folder = make_app(tmp_path / "dev", "3.0.0")
    manifest, path = store.resolve(folder)
    assert (manifest.version, path) == ("3.0.0", folder)

    calls: list[Path] = []
    real = store_module.safe_extract

    def counting(src: Path, dest: Path, limits: PackageLimits) -> AppManifest:
        calls.append(src)
        return real(src, dest, limits)

    monkeypatch.setattr(store_module, "safe_extract", counting)
    manifest, cached = store.resolve(str(v1))
    assert manifest.version == "1.0.0"
    assert cached.parent == home / "cache" / "packages" and len(cached.name) == 64
    assert tree(cached) == tree(tmp_path / "v1")
    assert store.resolve(v1) == (manifest, cached)
    assert len(calls) == 1  # the second resolve reused the cache
    assert list((home / "staging").iterdir()) == []

    store.install(v1)
    assert store.resolve("demo") == (manifest, store.get("demo")[1])
    with pytest.raises(NotFound, match="neither an installed app"):
        store.resolve("nothing-here")


def test_resolve_refused_package_leaves_no_cache(home: Path, tmp_path: Path) -> None:
    store = AppStore(home)
    bad = tmp_path / "bad.eapp"
    bad.write_bytes(b"not a zip")
    with pytest.raises(PackageError, match="not a zip"):
        store.resolve(bad)
    assert list((home / "cache" / "packages").iterdir()) == []
    assert list((home / "staging").iterdir()) == []


def test_store_lock_busy_and_recovery_does_not_block(home: Path, v1: Path) -> None:
    AppStore(home)
    leftover = home / "staging" / "new.deadbeef"
    leftover.mkdir()
    fd = os.open(home / "store.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        started = time.monotonic()
        store = AppStore(home, lock_timeout=0.2)  # someone is mid-install: leave staging be
        assert leftover.exists()
        with pytest.raises(Busy):
            store.install(v1)
        assert time.monotonic() - started < 30  # gave up on the lock, did not hang
    finally:
        os.close(fd)
    AppStore(home)
    assert not leftover.exists()


# ---------------------------------------------------------------- crash safety


class Crash(BaseException):
    """Stands for the process dying at a step (BaseException: nothing should swallow it)."""


def expected_after(step: str, upgrade: bool) -> str | None:
    """Which version must be installed after a crash at ``step``."""
    if step in ("mid-extract", "extracted", "old-aside"):
        return "1.0.0" if upgrade else None
    return "2.0.0"


def check_state(home: Path, want: str | None, tmp_path: Path) -> None:
    store = AppStore(home)  # a fresh start recovers
    assert list((home / "staging").iterdir()) == []
    if want is None:
        assert store.list() == []
        assert not (home / "apps" / "demo").exists()
    else:
        assert [m.version for m in store.list()] == [want]
        source = tmp_path / ("v1" if want == "1.0.0" else "v2")
        assert tree(store.get("demo")[1]) == tree(source)
        # nothing else left: the pointer file and the versions it names
        named = {store.get("demo")[1].name}
        if store.previous_folder("demo") is not None:
            named.add(store.previous_folder("demo").name)  # type: ignore[union-attr]
        assert {p.name for p in (home / "apps" / "demo").iterdir()} == {"installed.json", *named}


def crash_points(steps: list[str]) -> list[object]:
    # A fresh install has no old version to set aside, so no "old-aside" step.
    return [pytest.param(step, upgrade, id=f"{step}-{'upgrade' if upgrade else 'fresh'}")
            for step in steps for upgrade in (False, True) if upgrade or step != "old-aside"]


@pytest.mark.parametrize(("step", "upgrade"), crash_points(list(STEPS)))
def test_exception_at_each_step_leaves_old_or_new(home: Path, v1: Path, v2: Path, tmp_path: Path,
                                                  step: str, upgrade: bool) -> None:
    if upgrade:
        AppStore(home).install(v1)

    def hook(name: str) -> None:
        if name == step:
            raise Crash(name)

    with pytest.raises(Crash):
        AppStore(home, on_step=hook).install(v2)
    check_state(home, expected_after(step, upgrade), tmp_path)


CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from estarter import packaging
    from estarter.store import AppStore

    home, source, step = sys.argv[1:4]

    def die(name=None):
        os.kill(os.getpid(), signal.SIGKILL)

    if step == "mid-extract":
        real = packaging._extract_file
        count = [0]
        def extract_then_die(*args, **kwargs):
            total = real(*args, **kwargs)
            count[0] += 1
            if count[0] == 2:
                die()
            return total
        packaging._extract_file = extract_then_die

    AppStore(Path(home), on_step=lambda name: die() if name == step else None).install(source)
""")


@pytest.mark.parametrize(("step", "upgrade"), crash_points(["mid-extract", *STEPS]))
def test_sigkill_at_each_step_leaves_old_or_new(home: Path, v1: Path, v2: Path, tmp_path: Path,
                                                step: str, upgrade: bool) -> None:
    if upgrade:
        AppStore(home).install(v1)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(home), str(v2), step],
                          env=env, capture_output=True, timeout=60, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    if step in ("mid-extract", "extracted"):
        assert list((home / "staging").iterdir()), "the kill should leave staging to clean"
    check_state(home, expected_after(step, upgrade), tmp_path)
