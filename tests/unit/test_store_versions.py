"""One folder per installed version (apps/<id>/<version>-<digest>/, never changed while
it exists): an upgrade leaves the running version's folder as it is, a folder a run
pins outlives the pointer's move, an old-layout home is migrated (also when killed
midway). No Ray."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from estarter.store import POINTER, AppStore, pin_folder, unpin_folder
from tests.unit.test_store import make_app, tree


def versions(home: Path, app_id: str = "demo") -> set[str]:
    return {p.name for p in (home / "apps" / app_id).iterdir() if p.is_dir()}


def test_an_upgrade_never_touches_the_installed_version_folder(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = AppStore(home)
    store.install(make_app(tmp_path / "v1", "1.0.0", {"data.txt": "one"}))
    _, v1 = store.get("demo")
    before = (tree(v1), v1.stat().st_ino, (v1 / "data.txt").stat().st_ino)
    store.install(make_app(tmp_path / "v2", "2.0.0", {"data.txt": "two"}))
    _, v2 = store.get("demo")
    assert v2 != v1 and v2.parent == v1.parent and v2.name.startswith("2.0.0-")
    assert (tree(v1), v1.stat().st_ino, (v1 / "data.txt").stat().st_ino) == before
    assert (v2 / "data.txt").read_text() == "two"
    assert store.previous_folder("demo") == v1
    pointer = json.loads((home / "apps" / "demo" / POINTER).read_text())
    assert pointer == {"current": v2.name, "previous": v1.name}


def test_a_third_version_removes_the_first_unless_a_run_pins_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = AppStore(home)
    store.install(make_app(tmp_path / "v1", "1.0.0"))
    _, v1 = store.get("demo")
    pin = pin_folder(v1)
    assert pin is not None
    try:
        store.install(make_app(tmp_path / "v2", "2.0.0"))
        store.install(make_app(tmp_path / "v3", "3.0.0"))  # v1 is neither current nor previous
        assert v1.is_dir() and (v1 / "main.py").read_text() == "print('1.0.0')\n"
        assert len(versions(home)) == 3
        AppStore(home)  # a construction collects too: still pinned
        assert v1.is_dir()
    finally:
        unpin_folder(pin)
    AppStore(home)  # the run has ended: the next store change removes it
    assert not v1.exists() and len(versions(home)) == 2


def test_uninstall_leaves_a_pinned_version_until_its_run_ends(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = AppStore(home)
    store.install(make_app(tmp_path / "v1", "1.0.0"))
    _, v1 = store.get("demo")
    pin = pin_folder(v1)
    try:
        store.uninstall("demo")
        assert store.list() == [] and v1.is_dir()
        with pytest.raises(Exception, match="not installed"):
            store.get("demo")
    finally:
        unpin_folder(pin)
    AppStore(home)
    assert not (home / "apps" / "demo").exists()


def test_reinstalling_the_same_files_reuses_their_folder(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = AppStore(home)
    source = make_app(tmp_path / "v1", "1.0.0")
    store.install(source)
    _, first = store.get("demo")
    store.install(source)
    assert store.get("demo")[1] == first and store.previous("demo") is None
    store.install(make_app(tmp_path / "v2", "2.0.0"))
    store.install(source)  # back to 1.0.0: its folder again, 2.0.0 the previous
    assert store.get("demo")[1] == first
    assert store.previous("demo").version == "2.0.0"  # type: ignore[union-attr]


# ---------------------------------------------------------------- the old layout


def old_layout(tmp_path: Path, previous: bool = True) -> Path:
    """A home as the store of before kept it: apps/<id>/ the app, previous/<id>/."""
    home = tmp_path / "old-home"
    (home / "apps").mkdir(parents=True)
    (home / "staging").mkdir()
    shutil.copytree(make_app(tmp_path / "o2", "0.2.0", {"x.txt": "2"}), home / "apps" / "demo")
    shutil.copytree(make_app(tmp_path / "other", "1.0.0", app_id="other"),
                    home / "apps" / "other")
    if previous:
        (home / "previous").mkdir()
        shutil.copytree(make_app(tmp_path / "o1", "0.1.0", {"x.txt": "1"}),
                        home / "previous" / "demo")
    return home


def check_migrated(home: Path, tmp_path: Path, previous: bool = True) -> None:
    store = AppStore(home)
    assert [(m.id, m.version) for m in store.list()] == [("demo", "0.2.0"), ("other", "1.0.0")]
    assert tree(store.get("demo")[1]) == tree(tmp_path / "o2")
    assert tree(store.get("other")[1]) == tree(tmp_path / "other")
    if previous:
        assert tree(store.previous_folder("demo")) == tree(tmp_path / "o1")  # type: ignore[arg-type]
    else:
        assert store.previous("demo") is None
    assert not (home / "previous").exists()
    assert list((home / "staging").iterdir()) == []
    assert not (home / "apps" / "demo" / "manifest.json").exists()
    if previous:
        back, replaced = store.rollback("demo")
        assert (back.version, replaced.version) == ("0.1.0", "0.2.0")
        assert tree(store.get("demo")[1]) == tree(tmp_path / "o1")


@pytest.mark.parametrize("previous", [True, False])
def test_an_old_layout_home_is_migrated(tmp_path: Path, previous: bool) -> None:
    home = old_layout(tmp_path, previous)
    check_migrated(home, tmp_path, previous)


class Killed(BaseException):
    pass


def kill_at(step: str) -> Callable[[str], None]:
    def on_step(name: str) -> None:
        if name == step:
            raise Killed(name)
    return on_step


@pytest.mark.parametrize("step", ["migrate-pointer", "migrate-current", "migrate-previous"])
def test_a_migration_killed_midway_is_finished_by_the_next_start(
        tmp_path: Path, step: str) -> None:
    home = old_layout(tmp_path)
    with pytest.raises(Killed):
        AppStore(home, on_step=kill_at(step))
    assert list((home / "staging").iterdir()), "the kill should leave the migration half done"
    check_migrated(home, tmp_path)


def test_an_interrupted_upgrade_of_the_old_layout_is_recovered_then_migrated(
        tmp_path: Path) -> None:
    home = old_layout(tmp_path, previous=False)
    # The old store, killed after setting 0.2.0 aside and before moving 0.3.0 in.
    (home / "apps" / "demo").rename(home / "staging" / "old.0123456789abcdef.demo")
    shutil.copytree(make_app(tmp_path / "o3", "0.3.0"), home / "staging" / "new.0123456789abcdef")
    check_migrated(home, tmp_path, previous=False)
