"""A python app's requirements.txt: only plain requirement lines; installed by pip,
wheels only, into a folder of its own that is complete or absent."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from estarter import pydeps
from estarter.errors import LaunchError, PackageError


def make_wheel(folder: Path, name: str = "estarter_testdep", value: int = 42) -> Path:
    """A minimal pure-Python wheel, so that no test needs an index."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{name}-1.0-py3-none-any.whl"
    info = f"{name}-1.0.dist-info"
    files = {
        f"{name}/__init__.py": f"VALUE = {value}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                         "Tag: py3-none-any\n",
    }
    record = "".join(f"{path},,\n" for path in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
        zf.writestr(f"{info}/RECORD", record)
    return wheel


@pytest.mark.parametrize("text,expected", [
    ("requests\n", ["requests"]),
    ("# deps\nfoo==1.2  # pinned\n\nbar[extra1, x2]>=2,<3 ; python_version >= '3.8'\n",
     ["foo==1.2", "bar[extra1, x2]>=2,<3 ; python_version >= '3.8'"]),
])
def test_plain_requirements_are_accepted(text: str, expected: list[str]) -> None:
    assert pydeps.parse(text) == expected


@pytest.mark.parametrize("line", [
    "-e .", "--index-url http://evil.example/simple", "-r /etc/other.txt",
    "--find-links /root", "pkg @ file:///etc/shadow", "https://x.example/p.whl",
    "/abs/path/pkg.whl", "./local", "..\\up", "pkg ==1 @ x", "na me",
])
def test_options_urls_and_paths_are_refused(line: str) -> None:
    with pytest.raises(PackageError, match=r"requirements.txt:2"):
        pydeps.parse("ok-pkg\n" + line + "\n")


def test_too_large_is_refused() -> None:
    with pytest.raises(PackageError, match="larger than"):
        pydeps.parse("x\n" * pydeps.MAX_REQUIREMENTS_BYTES)


def test_nothing_to_install_is_none(tmp_path: Path) -> None:
    assert pydeps.ensure(tmp_path, None) is None
    assert pydeps.ensure(tmp_path, "# only a comment\n") is None


def test_install_is_whole_and_shared(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    make_wheel(wheels)
    args = ("--no-index", "--find-links", str(wheels))
    target = pydeps.ensure(tmp_path / "home", "estarter_testdep==1.0\n", pip_args=args)
    assert target is not None and (target / "estarter_testdep" / "__init__.py").is_file()
    assert (target / pydeps.COMPLETE).exists()
    # The same set again: the same folder, no second install (no index is needed).
    assert pydeps.ensure(tmp_path / "home", "estarter_testdep==1.0\n",
                         pip_args=("--no-index",)) == target
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temp folder left


def test_failed_install_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="cannot install the app's requirements"):
        pydeps.ensure(tmp_path / "home", "estarter-no-such-package-xyz\n",
                      pip_args=("--no-index", "--find-links", str(tmp_path)))
    assert list((tmp_path / "home" / "deps").iterdir()) == []


def test_missing_pip_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pydeps, "pip_command",
                        lambda: ["/usr/bin/env", "python3", "-c", "import no_module_named_pip"])
    with pytest.raises(LaunchError, match="cannot install the app's requirements"):
        pydeps.ensure(tmp_path / "home", "anything\n")


def test_install_with_hostile_requirements_changes_nothing(tmp_path: Path) -> None:
    import json

    from estarter.apps import install
    from estarter.store import AppStore

    app = tmp_path / "app"
    app.mkdir()
    (app / "manifest.json").write_text(json.dumps(
        {"id": "req-app", "runtime": "python", "entry": "app.py"}))
    (app / "app.py").write_text("print('hi')\n")
    (app / "requirements.txt").write_text("--index-url http://evil.example/simple\nfoo\n")
    home = tmp_path / "home"
    with pytest.raises(PackageError, match="options are not allowed"):
        install(home, app, [], False)
    assert AppStore(home).list() == []
