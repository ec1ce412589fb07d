"""The pytest plugin as an app author uses it: a pytest run of its own (a subprocess
in a temp folder), with the plugin loaded through its entry point.

A conftest there counts ``ray.init`` calls and each Ray test records the address of
the Ray it ran on, so the run shows how many Rays it started (issue 14, acceptance 4).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

CONFTEST = '''
import os
import ray

_init = ray.init


def counted_init(*args, **kwargs):
    with open(os.environ["RAY_INIT_LOG"], "a") as fh:
        fh.write("init\\n")
    return _init(*args, **kwargs)


ray.init = counted_init
'''

TESTS = '''
import json, os
from pathlib import Path

import pytest
import ray

from estarter.testing import assert_exit, wait_for_log, wait_for_notification

APP = Path(__file__).parent / "app"


def record_ray():
    with open(os.environ["RAY_SEEN_LOG"], "a") as fh:
        fh.write(ray.get_runtime_context().gcs_address + "\\n")


def test_local_helpers(estarter_app):
    app = estarter_app(APP, grants=["ui.notification"])
    assert "hello" in wait_for_log(app, r"hel+o")
    note = wait_for_notification(app, title="^done$")
    assert note["message"] == "bye"
    assert_exit(app, reason="crashed", code=3)
    with pytest.raises(AssertionError, match="exited"):
        wait_for_log(app, "never printed", timeout=60)  # ends at the exit, not the timeout
    with pytest.raises(AssertionError, match="code 3"):
        assert_exit(app, code=0)
    assert not ray.is_initialized()


@pytest.mark.estarter_ray
def test_on_ray_first(estarter_app, estarter_runtime):
    assert not estarter_runtime.local
    app = estarter_app(APP)
    wait_for_log(app, "hello")
    assert_exit(app, code=3)
    record_ray()


@pytest.mark.estarter_ray
def test_on_ray_second(estarter_app, estarter_runtime, estarter_home):
    assert not estarter_runtime.local and estarter_runtime.home == estarter_home.resolve()
    app = estarter_app(APP)
    assert_exit(app, reason="crashed", code=3)
    record_ray()
'''

APP_SOURCE = '''
from sdk import EStarterClient
client = EStarterClient.connect()
print("hello from the app", flush=True)
client.ui.notify("done", "bye")
client.close()
raise SystemExit(3)
'''


def test_two_ray_tests_share_one_ray(tmp_path: Path) -> None:
    project = tmp_path / "author"
    (project / "app").mkdir(parents=True)
    (project / "app" / "app.py").write_text(textwrap.dedent(APP_SOURCE))
    (project / "app" / "manifest.json").write_text(json.dumps(
        {"id": "plugin-probe", "runtime": "python", "entry": "app.py",
         "permissions": ["ui.notification"]}))
    (project / "conftest.py").write_text(CONFTEST)
    (project / "test_app.py").write_text(TESTS)
    inits, seen = tmp_path / "inits.log", tmp_path / "seen.log"
    env = {**os.environ, "RAY_INIT_LOG": str(inits), "RAY_SEEN_LOG": str(seen)}
    for name in ("RAY_ADDRESS", "ESTARTER_RAY_ADDRESS", "ESTARTER_HOME", "PYTEST_ADDOPTS"):
        env.pop(name, None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=0",
         "-o", "timeout=600", "test_app.py"],
        cwd=project, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "3 passed" in proc.stdout, proc.stdout[-4000:]
    assert inits.read_text().splitlines() == ["init"], proc.stdout[-4000:]
    addresses = seen.read_text().splitlines()
    assert len(addresses) == 2 and addresses[0] == addresses[1], addresses

