"""``estarter init`` as an app author uses it (issue 14, acceptance 1): for each
runtime, init in an empty folder, ``estarter run`` of it exits 0, ``pytest`` in it passes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(*argv: str, cwd: Path, home: Path, timeout: float = 300
        ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "RAY_ADDRESS"))}
    env["ESTARTER_HOME"] = str(home)
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("runtime", ["python", "native", "wasm"])
def test_init_then_run_and_pytest(tmp_path: Path, runtime: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    name = f"my-{runtime}-app"
    made = run("-m", "estarter", "init", name, "--runtime", runtime, cwd=work,
               home=tmp_path / "home")
    assert made.returncode == 0, made.stderr
    folder = work / name
    manifest = json.loads((folder / "manifest.json").read_text())
    assert (manifest["$schema"], manifest["id"], manifest["runtime"]) == (
        "./manifest.schema.json", name, runtime)
    assert (folder / manifest["entry"]).is_file()

    # `estarter run` as typed: no runtime is up, so it starts an embedded Ray
    ran = run("-m", "estarter", "run", name, "--json", cwd=work, home=tmp_path / "home")
    assert ran.returncode == 0, ran.stderr
    got = [json.loads(line) for line in ran.stdout.splitlines() if line.startswith("{")]
    assert [e["message"] for e in got if e["event"] == "notification"] == [f"Hello from {name}!"]
    assert (got[-1]["event"], got[-1]["code"], got[-1]["reason"]) == ("exit", 0, "exited")

    tested = run("-m", "pytest", "-q", cwd=folder, home=tmp_path / "home-pytest")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "1 passed" in tested.stdout
