"""estarter init (estarter/scaffold.py): what a new folder holds, what is refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from estarter.cli import app
from estarter.manifest import load_manifest
from estarter.scaffold import InitError, init_app


def test_python_folder_is_complete_and_loads(tmp_path: Path) -> None:
    folder = init_app(tmp_path / "hello.app", "python")
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "app.py", "manifest.json", "manifest.schema.json", "test_app.py"]
    raw = json.loads((folder / "manifest.json").read_text())
    assert raw["$schema"] == "./manifest.schema.json"
    schema = json.loads((folder / "manifest.schema.json").read_text())
    assert "entry" in schema["properties"]
    m = load_manifest(folder)
    assert (m.id, m.runtime.value, m.entry) == ("hello.app", "python", "app.py")
    assert len((folder / "README.md").read_text().splitlines()) == 3
    assert "def test_" in (folder / "test_app.py").read_text()
    assert "estarter_runtime" in (folder / "test_app.py").read_text()
    assert oct(folder.stat().st_mode & 0o777) == "0o755"


@pytest.mark.parametrize("name", ["Bad", "-x", ".hidden", "a b", "x" * 65, "é", ".."])
def test_bad_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(InitError, match="bad app name"):
        init_app(tmp_path / name, "python")
    assert list(tmp_path.iterdir()) == []


def test_non_empty_folder_is_refused_and_kept(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(InitError, match="not empty"):
        init_app(tmp_path / "mine", "python")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    (tmp_path / "file").write_text("")
    with pytest.raises(InitError, match="not a folder"):
        init_app(tmp_path / "file", "python")


def test_empty_folder_is_used(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert (init_app(tmp_path / "empty", "python") / "app.py").is_file()


def test_failed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", "false")  # a compiler that fails
    with pytest.raises(InitError, match=r"build\.sh failed"):
        init_app(tmp_path / "nat", "native")
    assert list(tmp_path.iterdir()) == []  # neither the folder nor the staging folder


def test_unknown_runtime(tmp_path: Path) -> None:
    with pytest.raises(InitError, match="unknown runtime"):
        init_app(tmp_path / "x", "cobol")


def test_cli_init_and_its_refusals(tmp_path: Path) -> None:
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        runner = CliRunner()
        made = runner.invoke(app, ["init", "cli-app"])
        assert made.exit_code == 0, made.output
        assert (tmp_path / "cli-app" / "manifest.json").is_file()
        again = runner.invoke(app, ["init", "cli-app", "--runtime", "python"])
        assert again.exit_code == 2
        assert "exists and is not empty" in again.output
        bad = runner.invoke(app, ["init", "Cli App"])
        assert bad.exit_code == 2 and "bad app name" in bad.output
    finally:
        os.chdir(cwd)
