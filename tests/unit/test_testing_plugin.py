"""The pytest plugin's surface: documented fixtures with real types (issue 14). Its
behaviour (helpers, one shared Ray) is in tests/integration/test_pytest_plugin.py."""

from __future__ import annotations

import os
import subprocess
import sys
import typing
from collections.abc import Iterator
from pathlib import Path

import estarter.runtime
from estarter import testing
from estarter.runtime import AppHandle, Runtime


def test_fixtures_are_documented(tmp_path: Path) -> None:
    """``pytest --fixtures -v`` shows a docstring for each of the plugin's fixtures."""
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "--fixtures", "-v",
                           "-p", "no:cacheprovider"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    section = proc.stdout.split("fixtures defined from estarter.testing", 1)[1]
    section = section.split("fixtures defined from", 1)[0]
    blocks: dict[str, str] = {}
    for block in section.strip("- \n").split("\n\n"):
        head, _, doc = block.partition("\n")
        blocks[head.split()[0]] = doc
    assert set(blocks) == {"estarter_app", "estarter_home", "estarter_runtime",
                           "estarter_ray_session"}, section
    for name, doc in blocks.items():
        assert doc.strip() and "no docstring available" not in doc, (name, doc)
    assert "estarter_ray" in blocks["estarter_runtime"]
    assert "[session scope]" in section.split("estarter_ray_session", 1)[1].splitlines()[0]


def hints(fixture: typing.Any) -> dict[str, typing.Any]:
    fn = fixture._get_wrapped_function()
    return typing.get_type_hints(fn, localns=vars(estarter.runtime))


def test_fixtures_and_helpers_have_real_types() -> None:
    assert hints(testing.estarter_runtime)["return"] == Iterator[Runtime]
    assert hints(testing.estarter_app)["return"] == Iterator[testing.AppLauncher]
    assert hints(testing.estarter_home)["return"] is Path
    assert hints(testing.estarter_ray_session)["return"] == Iterator[bool]
    call = typing.get_type_hints(testing.AppLauncher.__call__, localns=vars(estarter.runtime))
    assert call["return"] is AppHandle
    for helper in (testing.wait_for_log, testing.wait_for_notification, testing.assert_exit):
        got = typing.get_type_hints(helper, localns=vars(estarter.runtime))
        assert got["app"] is AppHandle
    assert typing.get_type_hints(testing.assert_exit, localns=vars(estarter.runtime)
                                 )["return"] is estarter.runtime.ExitInfo
