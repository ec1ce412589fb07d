"""The operator's path for upgrade, rollback and configuration, as subprocesses:
offline (no runtime) and against a runtime ``up`` (the running app is moved to the
new version through the runtime; a secret shows in no CLI or console output)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from estarter.console.service import read_console
from estarter.kernel.ui import Notifications
from estarter.paths import kernel_db
from tests.apps import wait_until, write_app
from tests.integration.test_cli_lifecycle import ROOT, env_for, estarter, ok_json, runtime_up

SECRET = "cli-secret-4b1d93ee70"
SOURCE = """\
import hashlib, os, time
report(version=VERSION, key=hashlib.sha256(os.environ.get("API_KEY", "").encode()).hexdigest())
while True:
    time.sleep(0.2)
"""


def versioned(root: Path, version: str) -> Path:
    return write_app(root / version, "upgraded", f"VERSION = {version!r}\n" + SOURCE,
                     version=version, env=[{"name": "API_KEY", "secret": True}])


def reports(home: Path) -> list[dict[str, Any]]:
    store = Notifications(kernel_db(home))
    try:
        rows = store.list(1000, "upgraded")
    finally:
        store.close()
    return [json.loads(r["message"]) for r in sorted(rows, key=lambda r: r["id"])
            if r["title"] == "report"]


def runs(home: Path, version: str, after: int) -> bool:
    return any(r["version"] == version for r in reports(home)[after:])


def test_offline_install_keeps_the_previous_version_and_rollback_swaps(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ok_json(home, "install", str(versioned(tmp_path, "0.1.0")))
    assert estarter(home, "rollback", "upgraded").returncode == 2  # nothing to go back to
    second = ok_json(home, "install", str(versioned(tmp_path, "0.2.0")))
    assert (second["version"], second["restarted"]) == ("0.2.0", False)  # nothing runs
    back = ok_json(home, "rollback", "upgraded")
    assert (back["version"], back["from"], back["restarted"]) == ("0.1.0", "0.2.0", False)
    assert [r["version"] for r in ok_json(home, "list")] == ["0.1.0"]
    refused = estarter(home, "config", "set", "upgraded", "OTHER=1")
    assert refused.returncode == 2 and "does not declare OTHER" in refused.stderr
    shown = subprocess.run([sys.executable, "-m", "estarter", "config", "set", "upgraded",
                            "API_KEY", "--secret"], input=SECRET + "\n", capture_output=True,
                           text=True, env=env_for(home), cwd=ROOT, timeout=180)
    assert shown.returncode == 0 and SECRET not in shown.stdout + shown.stderr
    listed = ok_json(home, "config", "list", "upgraded")
    assert listed[0]["set"] is True and listed[0]["value"] is None
    assert SECRET in (home / "config" / "upgraded.secrets.json").read_text()


def test_upgrade_and_rollback_move_the_running_app_and_the_secret_stays_hidden(
        tmp_path: Path) -> None:
    home = tmp_path / "home"
    ok_json(home, "install", str(versioned(tmp_path, "0.1.0")))
    assert estarter(home, "config", "set", "upgraded", f"API_KEY={SECRET}",
                    "--secret").returncode == 0
    with runtime_up(home):
        ok_json(home, "start", "upgraded")
        assert wait_until(lambda: runs(home, "0.1.0", 0), 120)
        assert reports(home)[0]["key"] == hashlib.sha256(SECRET.encode()).hexdigest()
        count = len(reports(home))
        deferred = ok_json(home, "install", str(versioned(tmp_path, "0.2.0")), "--no-restart")
        assert deferred["restarted"] is False
        upgraded = ok_json(home, "install", str(versioned(tmp_path, "0.3.0")))
        assert upgraded["restarted"] is True
        assert wait_until(lambda: runs(home, "0.3.0", count), 120)
        count = len(reports(home))
        back = ok_json(home, "rollback", "upgraded")
        assert (back["version"], back["restarted"]) == ("0.2.0", True)
        assert wait_until(lambda: runs(home, "0.2.0", count), 120)

        outputs = {args: estarter(home, *args) for args in (
            ("ps", "--json"), ("ps",), ("inspect", "upgraded", "--json"),
            ("logs", "upgraded"), ("logs", "--json"), ("list", "--json"),
            ("config", "list", "upgraded"), ("config", "get", "upgraded", "API_KEY"),
            ("notifications", "--json"))}
        for args, proc in outputs.items():
            assert proc.returncode == 0, (args, proc.stderr)
            assert SECRET not in proc.stdout + proc.stderr, args
        url = (read_console(home) or {}).get("url")
        assert url, "up serves the console"
        if url:
            token = (home / "run" / "operator-token").read_text().strip()
            with httpx.Client(base_url=url, timeout=60,
                              headers={"Authorization": f"Bearer {token}"}) as api:
                for path in ("/api/apps", "/api/apps/upgraded", "/api/apps/upgraded/logs",
                             "/api/notifications"):
                    answer = api.get(path)
                    assert answer.status_code == 200, path
                    assert SECRET not in answer.text, path
        ok_json(home, "stop", "upgraded")
    holders = [p for p in home.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert holders == [home / "config" / "upgraded.secrets.json"]

