"""The operator's CLI against a persistent runtime (``estarter up``), as subprocesses.

Each runtime here has its own ESTARTER_HOME and its own Ray head (own temp dir and
ports), and is always brought ``down`` in a finalizer, even when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from estarter.daemon import read_runtime, runtime_processes
from tests.apps import wait_until

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted(p for p in (ROOT / "samples").iterdir() if (p / "manifest.json").is_file())
FAST_RESTARTS = {"ESTARTER_RESTART_INITIAL_DELAY": "0.2", "ESTARTER_RESTART_MAX_DELAY": "1"}


def env_for(home: Path) -> dict[str, str]:
    env = {**os.environ, "ESTARTER_HOME": str(home), **FAST_RESTARTS}
    for var in ("RAY_ADDRESS", "ESTARTER_RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"):
        env.pop(var, None)
    return env


def estarter(home: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "estarter", *args], capture_output=True,
                          text=True, env=env_for(home), cwd=ROOT, timeout=timeout)


def ok_json(home: Path, *args: str) -> Any:
    proc = estarter(home, *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@contextlib.contextmanager
def runtime_up(home: Path) -> Iterator[Path]:
    """A home with a runtime ``up``; ``down`` afterwards, and nothing of it left."""
    try:
        up = ok_json(home, "up")
        assert up["status"] == "started" and up["started_head"] is True
        yield home
    finally:
        info = read_runtime(home)
        down = estarter(home, "down", "--json")
        assert down.returncode == 0, down.stderr
        if info is not None:
            left = runtime_processes(info.temp_dir, info.gcs_port)
            assert not left, [p.pid for p in left]


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One runtime for the tests of this module that do not kill it."""
    with runtime_up(tmp_path_factory.mktemp("shared") / "home") as home:
        yield home


@pytest.fixture
def own_home(tmp_path: Path) -> Iterator[Path]:
    """A runtime of its own, for a test that kills it."""
    with runtime_up(tmp_path / "home") as home:
        yield home


def sample_id(sample: Path) -> str:
    return str(json.loads((sample / "manifest.json").read_text())["id"])


def test_every_sample_packs_installs_starts_lists_stops_uninstalls(shared_home: Path,
                                                                   tmp_path: Path) -> None:
    home = shared_home
    assert SAMPLES, "no samples found"
    for sample in SAMPLES:
        app_id = sample_id(sample)
        packed = estarter(home, "pack", str(sample), "-o", str(tmp_path / f"{app_id}.app.zip"))
        assert packed.returncode == 0, packed.stderr
        package = Path(packed.stdout.strip())
        assert package.is_file()
        installed = ok_json(home, "install", str(package))
        assert installed["appId"] == app_id
        assert app_id in [r["appId"] for r in ok_json(home, "list")]
        started = ok_json(home, "start", app_id)
        assert started["appId"] == app_id and started["runId"] >= 1
        assert started["state"] in ("starting", "running", "exited")
        ps = {r["appId"]: r for r in ok_json(home, "ps")}
        assert ps[app_id]["runId"] == started["runId"]
        stopped = ok_json(home, "stop", app_id)
        assert stopped["state"] in ("exited", "failed") and stopped["exit"] is not None
        assert stopped["exit"]["reason"] in ("exited", "stopped"), stopped
        listed = {r["appId"]: r for r in ok_json(home, "list")}
        assert listed[app_id]["state"] == "exited"
        at_rest = ok_json(home, "inspect", app_id)
        assert at_rest["manifest"]["id"] == app_id and at_rest["exit"] is not None
        assert ok_json(home, "uninstall", app_id)["uninstalled"] is True
        assert app_id not in [r["appId"] for r in ok_json(home, "list")]


def test_inspect_and_logs_of_a_running_app(shared_home: Path, tmp_path: Path) -> None:
    home = shared_home
    folder = tmp_path / "sleeper"
    folder.mkdir()
    (folder / "app.py").write_text(
        "import sys, time\nprint('awake', file=sys.stderr, flush=True)\ntime.sleep(120)\n")
    (folder / "manifest.json").write_text(json.dumps(
        {"id": "sleeper", "runtime": "python", "entry": "app.py", "memoryLimitMb": 64}))
    ok_json(home, "install", str(folder))
    ok_json(home, "start", "sleeper")
    info = ok_json(home, "inspect", "sleeper")
    assert info["state"] == "running" and "limits" in info["host"]
    actors = ok_json(home, "doctor")["runtime"]["actors"]
    named = [a["name"] for a in actors if a["role"] != "supervisor"]
    assert named == ["estarter-kernel", "estarter-permissions", "estarter-vfs"], actors
    assert [a["appId"] for a in actors if a.get("appId")] == ["sleeper"], actors
    assert all(a["alive"] and a["pid"] and a["node"] for a in actors), actors
    # While the runtime is up, grants change through its permissions actor, audited.
    revoked = ok_json(home, "permissions", "revoke", "sleeper", "fs.read")
    assert "fs.read" not in revoked["granted"]
    audit = ok_json(home, "permissions", "audit", "sleeper")
    assert [(a["decision"], a["method"]) for a in audit][-1] == ("revoked", "operator:cli")
    assert wait_until(lambda: "awake" in estarter(home, "logs", "sleeper").stdout, 60)
    assert ok_json(home, "restart", "sleeper")["runId"] > info["runId"]
    ok_json(home, "stop", "sleeper")


def test_run_against_up_follows_the_app_to_its_exit_status(shared_home: Path,
                                                           tmp_path: Path) -> None:
    """``estarter run`` while a runtime is up goes through the kernel's operator socket:
    the app's notification and exit come back as events, its status is the CLI's."""
    from tests.integration.test_cli_run import check_hello, events

    home = shared_home
    check_hello(estarter(home, "run", str(ROOT / "samples" / "hello-native"), "--json"))
    folder = tmp_path / "three"
    folder.mkdir()
    (folder / "app.py").write_text("import sys\nprint('bye', file=sys.stderr)\nsys.exit(3)\n")
    (folder / "manifest.json").write_text(json.dumps(
        {"id": "three", "runtime": "python", "entry": "app.py"}))
    proc = estarter(home, "run", str(folder), "--json")
    assert proc.returncode == 3, proc.stderr
    got = events(proc.stdout)
    assert any(e["event"] == "log" and "bye" in e["message"] for e in got), got
    assert (got[-1]["event"], got[-1]["code"]) == ("exit", 3)


def kill_runtime(home: Path) -> None:
    """kill -9 every process of the runtime: Ray head, kernel, supervisors, apps."""
    info = read_runtime(home)
    assert info is not None and info.temp_dir
    procs = runtime_processes(info.temp_dir, info.gcs_port)
    assert procs
    for proc in procs:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=30)
    assert not alive
    assert wait_until(lambda: not runtime_processes(info.temp_dir, info.gcs_port), 30)


def test_kill_9_everything_then_up_brings_it_all_back(own_home: Path, tmp_path: Path) -> None:
    home = own_home
    keeper = tmp_path / "keeper"
    keeper.mkdir()
    (keeper / "app.py").write_text(
        "import time\nfrom sdk import EStarterClient\nc = EStarterClient.connect()\n"
        "if not c.fs.exists('/appdata/data.txt'):\n"
        "    c.fs.write_text('/appdata/data.txt', 'precious')\n"
        "while True:\n    c.system.ping()\n    time.sleep(0.2)\n")
    (keeper / "manifest.json").write_text(json.dumps(
        {"id": "keeper", "runtime": "python", "entry": "app.py", "restart": "always",
         "permissions": ["fs.read", "fs.write", "system.info"]}))
    idle = tmp_path / "idle"
    idle.mkdir()
    (idle / "app.py").write_text("")
    (idle / "manifest.json").write_text(json.dumps(
        {"id": "idle", "runtime": "python", "entry": "app.py"}))
    ok_json(home, "install", str(keeper), "--grant", "fs.write")
    ok_json(home, "install", str(idle))
    first = ok_json(home, "start", "keeper")
    data = home / "vfs" / "appdata" / "keeper" / "data.txt"
    assert wait_until(data.exists, 60)

    kill_runtime(home)
    assert estarter(home, "ps").returncode == 2  # recorded but not reachable

    up = ok_json(home, "up")
    assert up["recovery"]["relaunched"] == ["keeper"], up
    assert sorted(r["appId"] for r in ok_json(home, "list")) == ["idle", "keeper"]
    assert data.read_text() == "precious"
    perms = ok_json(home, "permissions", "list", "keeper")
    assert perms["granted"] == ["fs.read", "fs.write"]

    def keeper_running() -> bool:
        rows = {r["appId"]: r for r in ok_json(home, "ps")}
        row = rows.get("keeper", {})
        return row.get("state") == "running" and row.get("runId", 0) > first["runId"]

    assert wait_until(keeper_running, 60)


def test_sigkill_during_install_leaves_no_app_or_the_whole_app(tmp_path: Path) -> None:
    home = tmp_path / "home"
    package = tmp_path / "big.app.zip"
    chunk = os.urandom(4 * 1024 * 1024)
    names = [f"data/blob{i:03}.bin" for i in range(40)]
    with zipfile.ZipFile(package, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("manifest.json", json.dumps({"id": "big", "runtime": "python",
                                                 "entry": "app.py"}))
        zf.writestr("app.py", "")
        for i, name in enumerate(names):
            zf.writestr(name, bytes([i]) + chunk)
    staging = home / "staging"
    proc = subprocess.Popen([sys.executable, "-m", "estarter", "install", str(package)],
                            env=env_for(home), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        def extracting() -> bool:
            try:
                return any(p.name.startswith("new.") and any(p.rglob("*.bin"))
                           for p in staging.iterdir())
            except OSError:
                return False

        assert wait_until(extracting, 60, interval=0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    listed = ok_json(home, "list")  # the next command repairs the store
    assert list(staging.iterdir()) == []
    app_dir = home / "apps" / "big"
    if listed:  # the kill came after the publishing rename: all of it is there
        assert [r["appId"] for r in listed] == ["big"]
        app_dir /= json.loads((app_dir / "installed.json").read_text())["current"]
        assert sorted(str(p.relative_to(app_dir)) for p in app_dir.rglob("*.bin")) == names
    else:
        assert not app_dir.exists()
    ok_json(home, "install", str(package))
    assert len(list((home / "apps" / "big").rglob("*.bin"))) == len(names)
