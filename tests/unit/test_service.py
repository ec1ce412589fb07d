"""``estarter service``: the unit's content, systemd-analyze's verdict, and ``up`` /
``down`` handed to systemctl where the unit is installed and systemd runs (a fake
systemctl here: this host has no systemd as PID 1)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from typer.testing import CliRunner

from estarter import service
from estarter.cli import app
from estarter.daemon import RuntimeInfo, write_runtime


def settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_unit_runs_up_and_down_for_this_home_and_tracks_the_head(tmp_path: Path) -> None:
    home = tmp_path / "home"
    text = service.unit_text(home, ["/opt/venv/bin/estarter"])
    got = settings(text)
    assert got["ExecStart"] == [f"/opt/venv/bin/estarter up --home {home}"]
    assert got["ExecStop"] == [f"/opt/venv/bin/estarter down --home {home}"]
    # up returns once the head runs detached: systemd tracks the GCS through its pid file
    assert got["Type"] == ["forking"] and got["PIDFile"] == [f"{home}/run/head.pid"]
    assert got["Restart"] == ["on-failure"] and got["KillMode"] == ["control-group"]
    assert got["Environment"] == [f"ESTARTER_HOME={home}", "ESTARTER_SERVICE=1"]
    assert got["WantedBy"] == ["multi-user.target"]
    assert text.index("[Unit]") < text.index("[Service]") < text.index("[Install]")


def test_unit_that_joins_a_cluster_has_no_head_to_track(tmp_path: Path) -> None:
    got = settings(service.unit_text(tmp_path, ["/e"], address="10.0.0.1:6379", user=True))
    assert got["ExecStart"] == [f"/e up --home {tmp_path} --address 10.0.0.1:6379"]
    assert got["Type"] == ["oneshot"] and got["RemainAfterExit"] == ["yes"]
    assert "PIDFile" not in got and got["WantedBy"] == ["default.target"]


def test_odd_homes_are_quoted_and_escaped(tmp_path: Path) -> None:
    home = tmp_path / 'my home%d$x"'
    got = settings(service.unit_text(home, ["/e"]))
    escaped = str(home).replace("%", "%%").replace('"', '\\"')
    assert got["ExecStart"] == [f'/e up --home "{escaped.replace("$", "$$")}"']
    assert got["Environment"][0] == f'"ESTARTER_HOME={escaped}"'
    assert got["PIDFile"] == [f"{str(home).replace('%', '%%')}/run/head.pid"]
    with pytest.raises(service.EstarterError):
        service.unit_text(tmp_path / "a\nb", ["/e"])


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (Debian package systemd)")
@pytest.mark.parametrize("address", [None, "10.0.0.1:6379"])
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path, address: str | None) -> None:
    home = tmp_path / "my home"
    unit = tmp_path / service.unit_name(home)
    unit.write_text(service.unit_text(home, service.estarter_command(), address))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert unit.name not in proc.stderr and str(unit) not in proc.stderr, proc.stderr


class FakeSystemctl:
    """Records each systemctl command; answers ``code``."""

    def __init__(self, code: int = 0) -> None:
        self.calls: list[list[str]] = []
        self.code = code

    def __call__(self, argv: Sequence[str]) -> tuple[int, str]:
        self.calls.append(list(argv))
        return self.code, "" if self.code == 0 else "Job failed"


def invoke(home: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [*args, "--home", str(home)])
    return result.exit_code, result.stdout, result.stderr


def test_install_without_systemd_writes_the_unit_and_says_so(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    monkeypatch.setattr(service, "systemd_running", lambda: False)
    home, units = tmp_path / "home", tmp_path / "units"
    code, stdout, stderr = invoke(home, "service", "install", "--unit-dir", str(units),
                                  "--json")
    assert code == 0, stderr
    data = json.loads(stdout)
    path = units / service.unit_name(home.resolve())
    assert data["path"] == str(path) and path.read_text() == data["content"]
    assert (data["systemd"], data["enabled"]) == (False, False)
    assert "systemd is not running on this host" in data["note"]
    human = invoke(home, "service", "install", "--unit-dir", str(units))
    assert f"wrote {path}" in human[1] and "ExecStart=" in human[1]
    assert "systemd is not running" in human[2]
    # up and down behave as before, after a note: nothing to hand over.
    monkeypatch.setenv("ESTARTER_HOME", str(home))
    from estarter import cli_service
    assert cli_service.delegated(home.resolve(), "down", True) is False
    assert json.loads(invoke(home, "service", "uninstall", "--json")[1])["removed"] is True
    assert not path.exists()


def test_with_systemd_install_enables_and_up_down_are_systemctl(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeSystemctl()
    monkeypatch.setattr(service, "systemd_running", lambda: True)
    monkeypatch.setattr(service, "run_command", fake)
    monkeypatch.delenv(service.SERVICE_ENV, raising=False)
    home, units = (tmp_path / "home").resolve(), tmp_path / "units"
    code, stdout, stderr = invoke(home, "service", "install", "--unit-dir", str(units),
                                  "--json")
    assert code == 0, stderr
    unit = service.unit_name(home)
    ctl = fake.calls[0][:-1] if fake.calls[0][-1] == "daemon-reload" else None
    assert ctl is not None and fake.calls[1] == [*ctl, "enable", unit]
    assert json.loads(stdout)["enabled"] is True
    fake.calls.clear()
    write_runtime(home, RuntimeInfo(str(home), "127.0.0.1:1", True))  # what the unit's up wrote
    code, stdout, stderr = invoke(home, "up", "--json")
    assert code == 0, stderr
    assert fake.calls == [[*ctl, "start", unit]]
    assert json.loads(stdout)["service"] == unit
    code, stdout, stderr = invoke(home, "down", "--json")
    assert code == 0 and fake.calls[-1] == [*ctl, "stop", unit], stderr
    fake.code = 1  # a failed start: one line, naming the journal
    code, stdout, stderr = invoke(home, "up")
    assert code == 2 and "journalctl" in stderr and len(stderr.strip().splitlines()) == 1
    # The unit's own up (ESTARTER_SERVICE=1) never hands over to systemctl.
    monkeypatch.setenv(service.SERVICE_ENV, "1")
    assert service.managed(home) is None
