"""The runtime's actors: kernel, permissions and VFS (named, in namespace estarter)
plus one supervisor per running app; the permissions and VFS actors' workers
SIGKILLed under a running app: Ray restarts them, nothing committed is lost, and
the app's calls go on (retried, or failing with -32007), never hanging."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import psutil
import pytest

from estarter.errors import EstarterError
from estarter.runtime import Runtime
from tests.apps import wait_until, write_app

IDLE = """
client.ui.notify("up", "")
client.shutdown_requested.wait(120)
"""

# Writes its counter with fs.write (no append: retried across a VFS restart), reads
# it back, checks a permission, and records what it saw; -32007 answers are counted.
# Its first refused write (the grant revoked) is recorded too, and ends it.
STEADY = """
import time
n = unavailable = 0
deadline = time.time() + 120
while time.time() < deadline:
    n += 1
    try:
        client.fs.write_text("/appdata/n.txt", str(n))
        back = client.fs.read_text("/appdata/n.txt")
        granted = client.permissions.check("fs.write")
        client.registry.set("state", {"n": n, "back": back, "granted": granted,
                                      "unavailable": unavailable})
    except ApiError as exc:
        if exc.code == -32001:
            client.ui.notify("denied", str(n))  # (registry.set needs fs.write too)
            break
        if exc.code != -32007:
            raise
        unavailable += 1
        continue
    time.sleep(0.02)
"""


def state(rt: Runtime) -> dict[str, Any]:
    path = rt.home / "kernel.db"
    import sqlite3

    try:
        with sqlite3.connect(path, timeout=5) as db:
            row = db.execute("SELECT value FROM registry WHERE app_id='steady' "
                             "AND key='state'").fetchone()
    except sqlite3.Error:
        return {}
    return json.loads(row[0]) if row else {}


def test_runtime_shows_its_actors_and_a_supervisor_per_app(runtime: Runtime,
                                                           tmp_path: Path) -> None:
    apps = [runtime.launch(write_app(tmp_path, name, IDLE)) for name in ("one", "two")]
    try:
        assert wait_until(lambda: sum(a["role"] == "supervisor" and a.get("appId") is not None
                                      for a in runtime.actors()) == 2, 60), runtime.actors()
        actors = runtime.actors()
        roles = [a["role"] for a in actors if a["role"] != "supervisor"]
        assert roles == ["kernel", "permissions", "vfs"]
        assert all(a["alive"] and a["pid"] and a["node"] for a in actors)
        running = sorted(a["appId"] for a in actors if a["role"] == "supervisor"
                         and a.get("appId") is not None)
        assert running == ["one", "two"]
        if not runtime.local:
            names = [a["name"] for a in actors if a["role"] != "supervisor"]
            assert names == ["estarter-kernel", "estarter-permissions", "estarter-vfs"]
            assert len({a["pid"] for a in actors}) == len(actors)  # each its own worker
            # Not Ray's nice 15 (actors.options.RAY_SYSTEM_CONFIG).
            assert {psutil.Process(a["pid"]).nice() for a in actors} == {0}
            assert {a["nice"] for a in actors} == {0}  # as doctor shows it
            # Supervisors' workers never load pydantic (ray_api.skip_serialization_addons);
            # the kernel's does (manifests), so the check can tell.
            loaded = [(a["role"], a.get("appId"), _maps_name(a["pid"], "_pydantic_core"))
                      for a in actors]
            assert [k for k in loaded if k[0] == "kernel"] == [("kernel", None, True)]
            assert [k for k in loaded if k[0] == "supervisor" and k[2]] == [], loaded
    finally:
        for app in apps:
            app.stop(grace=2.0)


def _maps_name(pid: int, name: str) -> bool:
    """Whether a file named like ``name`` is mapped in process ``pid`` (a shared
    library it loaded)."""
    with open(f"/proc/{pid}/maps") as fh:
        return any(name in line for line in fh)


def retrying(rt: Runtime, name: str, *args: Any) -> Any:
    """The test's own calls to the kernel, retried while an actor restarts."""
    out: list[Any] = []

    def attempt() -> bool:
        try:
            out.append(getattr(rt.kernel, name)(*args))
            return True
        except EstarterError:
            return False

    assert wait_until(attempt, 90, interval=0.2), f"kernel.{name} never answered"
    return out[0]


def actor_pid(rt: Runtime, role: str) -> int:
    (pid,) = [a["pid"] for a in rt.actors() if a["role"] == role]
    return int(pid)


@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize("role", ["vfs", "permissions"])
def test_sigkill_of_an_actor_loses_nothing_and_calls_go_on(role: str, tmp_path: Path) -> None:
    rt = Runtime.start(home=tmp_path / "home")
    try:
        app = rt.launch(write_app(tmp_path, "steady", STEADY,
                                  permissions=["basic", "fs.write"]), grants=["fs.write"])
        assert wait_until(lambda: state(rt).get("n", 0) >= 5, 60), "\n".join(rt.logs("steady"))
        old = actor_pid(rt, role)
        os.kill(old, signal.SIGKILL)
        at_kill = state(rt)["n"]
        assert wait_until(lambda: state(rt).get("n", 0) >= at_kill + 50, 90), "\n".join(
            rt.logs("steady"))
        assert wait_until(lambda: actor_pid(rt, role) != old, 60)  # restarted by Ray
        now = state(rt)
        assert now["back"] == str(now["n"]) and now["granted"] is True  # file, grant kept
        # A change goes through the restarted permissions actor, counts on the app's
        # next call and is audited.
        assert "fs.write" not in retrying(rt, "revoke", "steady", ["fs.write"])
        assert wait_until(lambda: any(n["title"] == "denied" for n in rt.notifications()),
                          60), "\n".join(rt.logs("steady"))

        def audit() -> list[str]:
            return [a["decision"] for a in retrying(rt, "audit", "steady", 100_000)
                    if a["permission"] == "fs.write"]

        # The VFS ships its checks' rows to the permissions actor once a second.
        assert wait_until(lambda: audit()[-1:] == ["denied"], 30), audit()
        got = audit()
        assert got[0] == "granted" and "allowed" in got and "revoked" in got
        assert app.wait(60) is not None
    finally:
        rt.shutdown()


def _groups_holding(cpu: float, memory: int) -> dict[str, str]:
    """Ray's placement groups with one bundle of exactly ``cpu`` and ``memory``
    (this test's own amounts): group id -> state."""
    from ray.util.placement_group import placement_group_table

    return {gid: group["state"] for gid, group in placement_group_table().items()
            if [dict(b) for b in group["bundles"].values()]
            == [{"CPU": cpu, "memory": float(memory)}]}


def _lent_run(rt: Runtime, tmp_path: Path, end: str, cpu: float, memory: int) -> None:
    """Launch an app asking for ``cpu`` and ``memory`` while the pool's supervisor is
    idle; check it took that one and Ray holds its requests; end it by ``end``
    ("stop", or "sigkill" of its supervisor's worker); wait for the hold to go."""
    def idle_supervisors() -> set[str]:
        return {a["name"] for a in rt.actors()
                if a["role"] == "supervisor" and a.get("appId") is None}

    assert wait_until(idle_supervisors, 120), "the pool's supervisor never came up"
    warm = idle_supervisors()
    before = set(_groups_holding(cpu, memory))
    app = write_app(tmp_path, f"lent-{end}", IDLE, memoryLimitMb=memory >> 20,
                    cpuQuota=round(cpu * 100))
    handle = rt.launch(app)
    assert wait_until(lambda: handle.info().get("state") == "running", 60)
    host = handle.info()["host"]
    assert host["actorName"] in warm  # no new worker for it
    held = {g: s for g, s in _groups_holding(cpu, memory).items() if g not in before}
    assert list(held.values()) == ["CREATED"], held
    if end == "stop":
        handle.stop(grace=5.0)
    else:
        os.kill(psutil.Process(host["pid"]).ppid(), signal.SIGKILL)
        assert wait_until(lambda: handle.info().get("state") != "running", 120)
    (group,) = held
    assert wait_until(lambda: _groups_holding(cpu, memory).get(group, "REMOVED")
                      == "REMOVED", 120), _groups_holding(cpu, memory)


@pytest.mark.usefixtures("ray_session")
def test_an_app_with_requests_is_served_by_the_warm_supervisor_holding_them(
        tmp_path: Path) -> None:
    """Its requests are held in Ray's books on the supervisor's node while it runs
    (so placement stays honest), given back when it ends, and when its supervisor's
    worker is SIGKILLed. Before, the first launch of each request shape waited for a
    new supervisor's worker (about 1 s here)."""
    rt = Runtime.start(local=False, home=tmp_path / "home")
    try:
        for end in ("stop", "sigkill"):
            _lent_run(rt, tmp_path, end, cpu=0.3, memory=96 << 20)
    finally:
        rt.shutdown()
