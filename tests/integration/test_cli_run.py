"""``estarter run`` as a user runs it: a subprocess, its output and exit status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "samples" / "hello-native"


def estarter(*args: str, home: Path, cwd: Path | None = None,
             timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ESTARTER_HOME": str(home)}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "estarter", *args], capture_output=True,
                          text=True, env=env, cwd=cwd or ROOT, timeout=timeout)


def events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def check_hello(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, proc.stderr
    got = events(proc.stdout)
    kinds = [e["event"] for e in got]
    assert "notification" in kinds and kinds[-1] == "exit"
    note = next(e for e in got if e["event"] == "notification")
    assert note["title"] == "Hello from estarter"
    assert (got[-1]["code"], got[-1]["reason"]) == (0, "exited")


def test_run_json_on_embedded_ray(tmp_path: Path) -> None:
    check_hello(estarter("run", str(SAMPLE), "--json", home=tmp_path / "home"))


def test_embedded_ray_runs_supervisors_and_apps_at_nice_0(tmp_path: Path) -> None:
    """Ray's default worker niceness (15) starved the kernel, the supervisors and the
    apps beside any other load (actors.options.RAY_SYSTEM_CONFIG). The app inherits
    its supervisor's niceness and exits with its own."""
    app = tmp_path / "nice"
    app.mkdir()
    (app / "app.py").write_text("import os, sys; sys.exit(os.nice(0))\n")
    (app / "manifest.json").write_text(json.dumps(
        {"id": "nice", "runtime": "python", "entry": "app.py"}))
    proc = estarter("run", str(app), "--json", home=tmp_path / "home")
    assert (proc.returncode, events(proc.stdout)[-1]["reason"]) == (0, "exited"), proc.stderr


@pytest.mark.parametrize("mode", [[], ["--local"]], ids=["ray", "local"])
@pytest.mark.parametrize("sample", ["hello-wasm", "hello-wat"])
def test_run_wasm_samples(tmp_path: Path, sample: str, mode: list[str]) -> None:
    proc = estarter("run", str(ROOT / "samples" / sample), "--json", *mode,
                    home=tmp_path / "home")
    assert proc.returncode == 0, proc.stderr
    got = events(proc.stdout)
    assert [e["appId"] for e in got if e["event"] == "notification"] == [sample]
    assert (got[-1]["event"], got[-1]["code"], got[-1]["reason"]) == ("exit", 0, "exited")


def test_run_packed_zip_locally(tmp_path: Path) -> None:
    packed = estarter("pack", str(SAMPLE), "-o", str(tmp_path / "hello.app.zip"),
                      home=tmp_path / "home")
    assert packed.returncode == 0, packed.stderr
    zip_path = Path(packed.stdout.strip())
    assert zip_path.is_file()
    check_hello(estarter("run", str(zip_path), "--json", "--local", home=tmp_path / "home"))


def test_pack_default_writes_id_app_zip_in_cwd(tmp_path: Path) -> None:
    proc = estarter("pack", str(SAMPLE), home=tmp_path / "home", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "hello-native.app.zip").is_file()


def test_exit_code_passes_through(tmp_path: Path) -> None:
    app = tmp_path / "seven"
    app.mkdir()
    (app / "app.py").write_text("import sys; sys.exit(7)\n")
    (app / "manifest.json").write_text(json.dumps(
        {"id": "seven", "runtime": "python", "entry": "app.py"}))
    proc = estarter("run", str(app), "--local", "--json", home=tmp_path / "home")
    assert proc.returncode == 7
    assert events(proc.stdout)[-1]["reason"] == "crashed"


@pytest.mark.parametrize(
    ("manifest", "key"),
    [({"id": "x", "entry": "app.py", "memoryLimitMb": "lots"}, "memoryLimitMb"),
     ({"id": "x", "entry": "app.py", "wings": 2}, "wings"),
     ({"id": "x"}, "entry")],
)
def test_manifest_error_exits_2_naming_the_key(tmp_path: Path, manifest: dict[str, Any],
                                               key: str) -> None:
    app = tmp_path / "bad"
    app.mkdir()
    (app / "app.py").write_text("")
    (app / "manifest.json").write_text(json.dumps(manifest))
    proc = estarter("run", str(app), "--local", home=tmp_path / "home")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and lines[0].startswith("estarter: error:")


def test_unknown_app_exits_2(tmp_path: Path) -> None:
    proc = estarter("run", "no-such-app", "--local", home=tmp_path / "home")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1


def test_node_pin_needs_ray(tmp_path: Path) -> None:
    proc = estarter("run", str(SAMPLE), "--local", "--node", "abc", home=tmp_path / "home")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "estarter: error: node affinity needs a Ray runtime"
