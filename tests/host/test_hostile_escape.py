"""Hostile apps, section 1 of the hardening issue: no app leaves its sandbox through
its own manifest. Real child processes under the real launcher, bwrap and cgroups;
no Ray (the kernel-level refusal in both modes is in tests/integration/test_hostile.py).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from estarter.errors import PermissionDenied
from estarter.hosting.process_host import ProcessHost

from .test_enforcement import FACTS, Harness

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root, like the sandbox tests"),
    pytest.mark.skipif(FACTS.bwrap is None, reason="bwrap is not usable here"),
]


@pytest.fixture
def outside() -> Iterator[Path]:
    """A folder outside /tmp and /run (which every wrapped app gets fresh anyway), so
    that hiding a secret there is the mask's doing."""
    d = Path(tempfile.mkdtemp(prefix="enf-hostile-", dir="/var/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def harness(outside: Path) -> Iterator[Harness]:
    h = Harness(outside)
    try:
        yield h
    finally:
        h.close()


# -- 1. the flags count only when granted ------------------------------------------
@pytest.mark.parametrize("flag", [{"sandboxed": False}, {"network_allowed": True}])
def test_widening_flag_without_grant_is_refused(harness: Harness, flag: dict[str, bool]) -> None:
    granted = harness.policy("enf-gate", "print('never runs')\n", **flag)
    policy = replace(granted, granted=frozenset())  # requested, not granted
    host = ProcessHost(policy, harness.ctx("enf-gate"))
    harness.hosts.append(host)
    needs = "admin" if "sandboxed" in flag else "net.access"
    with pytest.raises(PermissionDenied, match=f"needs the {needs} permission granted"):
        host.start()
    assert host.pid is None  # nothing was started


# -- 2. even admin: no Ray token, no estarter state, no terminal, no way out -------
PROBE = """\
import fcntl, json, os, sys, termios
out = {{}}
def read(path):
    try:
        with open(path, "rb") as fh:
            return fh.read(64).decode(errors="replace")
    except OSError as exc:
        return "ERR " + type(exc).__name__
def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as exc:
        return "ERR " + type(exc).__name__
out["uid"] = os.getuid()
out["capeff"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0]
out["ray_token"] = read({ray_token!r})
out["ray_dir"] = read({ray_dir_token!r})
out["kernel_db"] = read({kernel_db!r})
out["other_app"] = read({other_app!r})
out["host_file"] = read({host_file!r})
out["etc_write"] = attempt(lambda: open("/etc/estarter-hostile-probe", "w"))
out["cgroup_move"] = attempt(
    lambda: open("/sys/fs/cgroup/pids/cgroup.procs", "w").write(str(os.getpid())))
out["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
out["signal_supervisor"] = attempt(lambda: os.kill({supervisor}, 0))
out["isatty"] = [os.isatty(fd) for fd in (0, 1, 2)]
out["dev_tty"] = attempt(lambda: os.close(os.open("/dev/tty", os.O_RDWR)))
out["pts"] = sorted(os.listdir("/dev/pts")) if os.path.isdir("/dev/pts") else []
out["env"] = sorted(os.environ)
out["tmp"] = attempt(lambda: open("/tmp/mine.txt", "w").write("x"))
out["root_write"] = attempt(lambda: open("/mine.txt", "w"))
print("probe:" + json.dumps(out), file=sys.stderr, flush=True)
"""


def probe(harness: Harness, outside: Path, app_id: str, **over: object) -> dict[str, object]:
    home = harness.home
    secrets = {
        "ray_token": outside / "ray-auth-token",
        "ray_dir_token": Path.home() / ".ray" / "auth_token",
        "kernel_db": home / "kernel.db",
        "other_app": home / "vfs" / "appdata" / "enf-other" / "secret.txt",
    }
    for path in (secrets["ray_token"], secrets["kernel_db"], secrets["other_app"]):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("SECRET")
    host_file = outside / "visible.txt"
    host_file.write_text("HOST")
    source = PROBE.format(**{k: str(v) for k, v in secrets.items()},
                          host_file=str(host_file), supervisor=os.getpid())
    harness.start(app_id, source, **over)
    return json.loads(harness.wait_log(app_id, "probe:", 30))


@pytest.mark.parametrize("sandboxed", [False, True], ids=["admin-unsandboxed", "sandboxed"])
def test_no_secret_no_terminal_no_way_out(harness: Harness, outside: Path,
                                           monkeypatch: pytest.MonkeyPatch,
                                           sandboxed: bool) -> None:
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(outside / "ray-auth-token"))
    got = probe(harness, outside, "enf-probe", sandboxed=sandboxed,
                granted=["fs.read", "fs.write"] + ([] if sandboxed else ["admin"]))
    assert got["capeff"] == "0000000000000000"
    assert got["uid"] == (65534 if sandboxed else 0)
    # Ray's credentials and the estarter home are masked even for admin.
    assert "SECRET" not in (got["ray_token"], got["ray_dir"], got["kernel_db"], got["other_app"])
    # The host's folders: read-only for admin, absent in the sandbox.
    assert got["host_file"] == ("ERR FileNotFoundError" if sandboxed else "HOST")
    assert str(got["etc_write"]).startswith("ERR")
    assert str(got["cgroup_move"]).startswith("ERR")
    # Its own PID namespace: no Ray worker, no supervisor to signal.
    assert len(got["pids"]) < 10, got["pids"]  # type: ignore[arg-type]
    assert str(got["signal_supervisor"]).startswith("ERR")
    # No terminal of the operator's: no tty on stdio, no /dev/tty, no host pts.
    assert got["isatty"] == [False, False, False]
    assert str(got["dev_tty"]).startswith("ERR")
    assert got["pts"] in ([], ["ptmx"])
    # The environment is DESIGN's list (and PWD, which bwrap sets to the working
    # folder): no orphan-guard token, nothing of the supervisor's.
    assert set(got["env"]) <= {  # type: ignore[arg-type]
        "PATH", "LANG", "ESTARTER_MODE", "ESTARTER_APP_ID", "PWD"}, got["env"]
    assert got["tmp"] == "ok"  # a private /tmp: the one writable place besides fs.*
    assert str(got["root_write"]).startswith("ERR")


def test_unsandboxed_app_is_reported_as_host_view(harness: Harness) -> None:
    host = harness.start("enf-view", "import sys, time\nprint('up', file=sys.stderr, "
                         "flush=True)\ntime.sleep(30)\n", sandboxed=False, granted=["admin"])
    harness.wait_log("enf-view", "up", 30)
    report = host.info()["limits"]
    assert report["sandbox"] == "bwrap host view"
    assert any("unsandboxed (admin granted)" in line for line in report["applied"])


# -- 3. python apps: standard library, SDK and own folder only -----------------------
IMPORTS = """\
import importlib, json, sys
out = {}
for name in ("psutil", "pydantic", "ray", "estarter", "cloudpickle", "wasmtime",
             "sdk", "helper", "json", "sqlite3"):
    try:
        importlib.import_module(name)
        out[name] = True
    except ImportError:
        out[name] = False
out["argv"] = sys.argv
out["main"] = __name__
print("imports:" + json.dumps(out), file=sys.stderr, flush=True)
"""


@pytest.mark.parametrize("sandboxed", [True, False], ids=["sandboxed", "admin-unsandboxed"])
def test_python_app_imports_only_stdlib_sdk_and_its_folder(harness: Harness,
                                                            sandboxed: bool) -> None:
    policy = harness.policy("enf-imports", IMPORTS, sandboxed=sandboxed,
                            granted=[] if sandboxed else ["admin"], args=("a1", "a2"))
    (policy.app_dir / "helper.py").write_text("X = 1\n")
    host = ProcessHost(policy, harness.ctx("enf-imports"))
    harness.hosts.append(host)
    host.start()
    got = json.loads(harness.wait_log("enf-imports", "imports:", 30))
    for name in ("psutil", "pydantic", "ray", "estarter", "cloudpickle", "wasmtime"):
        assert got[name] is False, f"{name} must not be importable by an app"
    for name in ("sdk", "helper", "json", "sqlite3"):
        assert got[name] is True, f"{name} must be importable by an app"
    assert got["argv"] == [str(policy.entry), "a1", "a2"] and got["main"] == "__main__"


def test_python_app_imports_its_own_requirements(harness: Harness, outside: Path) -> None:
    from estarter import pydeps

    from ..unit.test_pydeps import make_wheel

    wheels = outside / "wheels"
    make_wheel(wheels)
    deps = pydeps.ensure(harness.home, "estarter_testdep\n",
                         pip_args=("--no-index", "--find-links", str(wheels)))
    source = ("import json, sys, estarter_testdep\n"
              "try:\n    import psutil\n    ps = True\nexcept ImportError:\n    ps = False\n"
              "print('deps:' + json.dumps([estarter_testdep.VALUE, estarter_testdep.__file__,"
              " ps]), file=sys.stderr, flush=True)\n")
    harness.start("enf-deps", source, python_deps=deps)
    value, where, psutil_seen = json.loads(harness.wait_log("enf-deps", "deps:", 30))
    assert value == 42 and where.startswith("/estarter-deps/") and psutil_seen is False
