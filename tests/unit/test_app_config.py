"""Manifest ``env`` and ``healthCheck``, the config store, versions kept for rollback,
and the supervisor's heartbeat watchdog (fakes: no processes, no Ray, no sleeps)."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from estarter.appconfig import AppConfig
from estarter.errors import InvalidParams, ManifestError, NotFound
from estarter.hosting.base import HostContext
from estarter.hosting.process_host import child_env
from estarter.manifest import MAX_ENV_VALUE_BYTES, AppManifest, parse_manifest
from estarter.policy import SandboxPolicy
from estarter.store import AppStore
from estarter.supervision import Supervisor
from tests.unit.test_supervision import RULES, FakeClock, FakeHost, FakeKernel, Scheduler

SECRET = "s3cr3t-value-never-shown"
ENV = [{"name": "API_KEY", "description": "the key", "secret": True},
       {"name": "GREETING", "default": "hello"},
       {"name": "LEVEL"}]


def manifest(**extra: Any) -> AppManifest:
    return parse_manifest(json.dumps({"id": "demo", "runtime": "python", "entry": "app.py",
                                      **extra}))


# -- manifest ------------------------------------------------------------------


def test_env_and_health_check_round_trip_in_camel_case() -> None:
    m = manifest(env=ENV, healthCheck={"heartbeatSeconds": 5, "startGraceSeconds": 2})
    assert m.to_json()["healthCheck"] == {"heartbeatSeconds": 5, "startGraceSeconds": 2}
    assert [v["name"] for v in m.to_json()["env"]] == ["API_KEY", "GREETING", "LEVEL"]
    assert m.declared_env()["API_KEY"].secret and m.declared_env()["GREETING"].default == "hello"
    assert "env" not in manifest().to_json() and "healthCheck" not in manifest().to_json()
    assert manifest(healthCheck={"heartbeatSeconds": 3}).health_check.start_grace_seconds == 10


@pytest.mark.parametrize("env, why", [
    ([{"name": "lower"}], "not a variable name"),
    ([{"name": "9LIVES"}], "not a variable name"),
    ([{"name": "A-B"}], "not a variable name"),
    ([{"name": "X" * 129}], "not a variable name"),
    ([{"name": "PATH"}], "reserved"),
    ([{"name": "LANG"}], "reserved"),
    ([{"name": "ESTARTER_APP_ID"}], "reserved"),
    ([{"name": "ESTARTER_TOKEN"}], "reserved"),
    ([{"name": "LD_PRELOAD"}], "reserved"),
    ([{"name": "PYTHONPATH"}], "reserved"),
    ([{"name": "A"}, {"name": "A"}], "more than once"),
    ([{"name": "KEY", "secret": True, "default": "x"}], "secret cannot have a default"),
    ([{"name": "A", "default": "x" * (MAX_ENV_VALUE_BYTES + 1)}], "at most"),
    ([{"name": "A", "default": "a\x00b"}], "NUL"),
    ([{"name": "A", "colour": "red"}], "unknown key"),
    ([{"name": "A", "secret": "yes"}], "boolean"),
    ([{"name": f"V{i}"} for i in range(65)], "at most 64"),
])
def test_env_declarations_are_checked_strictly(env: list[dict[str, Any]], why: str) -> None:
    with pytest.raises(ManifestError, match=why) as info:
        manifest(env=env)
    assert str(info.value).startswith("manifest.json: env")


@pytest.mark.parametrize("check, key", [
    ({}, "healthCheck.heartbeatSeconds"),
    ({"heartbeatSeconds": 0}, "healthCheck.heartbeatSeconds"),
    ({"heartbeatSeconds": "5"}, "healthCheck.heartbeatSeconds"),
    ({"heartbeatSeconds": 5, "startGraceSeconds": -1}, "healthCheck.startGraceSeconds"),
    ({"heartbeatSeconds": 5, "every": 2}, "healthCheck.every"),
])
def test_health_check_is_checked(check: dict[str, Any], key: str) -> None:
    with pytest.raises(ManifestError) as info:
        manifest(healthCheck=check)
    assert info.value.data["key"] == key


def test_policy_carries_the_watchdog_and_hides_configuration_from_repr(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("")
    m = manifest(env=ENV, healthCheck={"heartbeatSeconds": 4, "startGraceSeconds": 1})
    policy = SandboxPolicy.from_manifest(m, tmp_path).with_app_env({"API_KEY": SECRET})
    assert (policy.heartbeat_seconds, policy.heartbeat_grace_seconds) == (4, 1)
    assert SECRET not in repr(policy)
    ctx = HostContext(api=lambda m, p: None, log=lambda lv, msg: None,  # type: ignore[arg-type,return-value]
                      on_exit=lambda i: None, home=tmp_path, appdata=tmp_path)
    env = child_env(policy, ctx)
    assert env["API_KEY"] == SECRET and env["ESTARTER_APP_ID"] == "demo"
    assert set(env) == {"API_KEY", "PATH", "LANG", "ESTARTER_MODE", "ESTARTER_APP_ID"}


# -- the config store ------------------------------------------------------------


def test_config_store_files_are_private_and_secrets_never_shown(tmp_path: Path) -> None:
    cfg, m = AppConfig(tmp_path), manifest(env=ENV)
    assert cfg.set(m, "API_KEY", SECRET)["secret"] is True  # declared secret
    cfg.set(m, "LEVEL", "debug")
    for path in (cfg.dir / "demo.json", cfg.dir / "demo.secrets.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cfg.dir.stat().st_mode) == 0o700
    assert SECRET in (cfg.dir / "demo.secrets.json").read_text()
    assert SECRET not in (cfg.dir / "demo.json").read_text()
    shown = json.dumps([cfg.entries(m), cfg.get(m, "API_KEY")])
    assert SECRET not in shown
    rows = {r["name"]: r for r in cfg.entries(m)}
    assert rows["API_KEY"]["set"] and rows["API_KEY"]["value"] is None
    assert (rows["GREETING"]["value"], rows["GREETING"]["source"]) == ("hello", "default")
    assert (rows["LEVEL"]["value"], rows["LEVEL"]["source"]) == ("debug", "set")
    assert cfg.env_for(m) == {"API_KEY": SECRET, "GREETING": "hello", "LEVEL": "debug"}


def test_a_plain_variable_set_as_secret_moves_to_the_secret_file(tmp_path: Path) -> None:
    cfg, m = AppConfig(tmp_path), manifest(env=ENV)
    cfg.set(m, "LEVEL", "plain")
    cfg.set(m, "LEVEL", SECRET, secret=True)
    assert not (cfg.dir / "demo.json").exists()  # nothing plain is left
    assert cfg.get(m, "LEVEL")["value"] is None and cfg.env_for(m)["LEVEL"] == SECRET
    assert cfg.unset("demo", "LEVEL") and not cfg.unset("demo", "LEVEL")
    assert "LEVEL" not in cfg.env_for(m)


@pytest.mark.parametrize("name, value, why", [
    ("UNDECLARED", "x", "does not declare UNDECLARED"),
    ("PATH", "/tmp", "reserved"),
    ("lower", "x", "not a variable name"),
    ("LEVEL", "x" * (MAX_ENV_VALUE_BYTES + 1), "at most"),
    ("LEVEL", "a\x00b", "NUL"),
])
def test_config_refuses_undeclared_names_and_unbounded_values(
        tmp_path: Path, name: str, value: str, why: str) -> None:
    with pytest.raises(InvalidParams, match=why):
        AppConfig(tmp_path).set(manifest(env=ENV), name, value)
    assert not (tmp_path / "config" / "demo.json").exists()


def test_config_bounds_an_apps_total(tmp_path: Path) -> None:
    env = [{"name": f"V{i}"} for i in range(10)]
    cfg, m = AppConfig(tmp_path), manifest(env=env)
    for i in range(8):  # 8 x 4 KB fit in 32 KiB, a 9th does not
        cfg.set(m, f"V{i}", "x" * 4000)
    with pytest.raises(InvalidParams, match="more than"):
        cfg.set(m, "V9", "x" * 4000)
    assert "V9" not in cfg.env_for(m)


def test_config_of_names_no_longer_declared_is_not_given(tmp_path: Path) -> None:
    cfg = AppConfig(tmp_path)
    cfg.set(manifest(env=ENV), "LEVEL", "debug")
    newer = manifest(env=[{"name": "GREETING"}])
    assert cfg.env_for(newer) == {}
    assert [r["source"] for r in cfg.entries(newer)] == ["unset", "undeclared"]
    cfg.forget("demo")
    assert cfg.entries(manifest(env=ENV))[2]["set"] is False
    with pytest.raises(InvalidParams):
        cfg.unset("../../etc", "LEVEL")  # an app id, never a path


# -- versions ----------------------------------------------------------------------


def app_folder(root: Path, version: str) -> Path:
    folder = root / f"src-{version}"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps(
        {"id": "demo", "version": version, "runtime": "python", "entry": "app.py"}))
    (folder / "app.py").write_text(f"VERSION = {version!r}\n")
    return folder


def test_upgrade_keeps_the_previous_version_and_rollback_swaps(tmp_path: Path) -> None:
    store = AppStore(tmp_path / "home")
    store.install(app_folder(tmp_path, "0.1.0"))
    assert store.previous("demo") is None
    with pytest.raises(NotFound, match="no previous version"):
        store.rollback("demo")
    store.install(app_folder(tmp_path, "0.2.0"))
    assert store.get("demo")[0].version == "0.2.0"
    assert store.previous("demo").version == "0.1.0"  # type: ignore[union-attr]
    back, replaced = store.rollback("demo")
    assert (back.version, replaced.version) == ("0.1.0", "0.2.0")
    assert "0.1.0" in (store.get("demo")[1] / "app.py").read_text()
    store.rollback("demo")  # and forward again
    assert store.get("demo")[0].version == "0.2.0"
    assert [m.id for m in store.list()] == ["demo"]
    assert not list(store.staging_dir.iterdir())
    store.uninstall("demo")
    assert store.previous("demo") is None


def test_a_rollback_killed_midway_is_the_old_state_or_the_new(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = AppStore(home)
    store.install(app_folder(tmp_path, "0.1.0"))
    store.install(app_folder(tmp_path, "0.2.0"))

    class Killed(BaseException):
        pass

    def kill_at(step: str) -> Callable[[str], None]:
        def on_step(name: str) -> None:
            if name == step:
                raise Killed
        return on_step

    for step, installed, previous in (("old-aside", "0.2.0", "0.1.0"),
                                      ("new-in", "0.1.0", "0.2.0")):
        with pytest.raises(Killed):
            AppStore(home, on_step=kill_at(step)).rollback("demo")
        again = AppStore(home)
        assert again.get("demo")[0].version == installed, step
        assert again.previous("demo").version == previous, step  # type: ignore[union-attr]
        if installed == "0.1.0":
            again.rollback("demo")


# -- the heartbeat watchdog ------------------------------------------------------------


class WatchRig:
    def __init__(self, tmp: Path, restart: str = "on-failure") -> None:
        (tmp / "app.py").write_text("")
        m = manifest(restart=restart, healthCheck={"heartbeatSeconds": 5,
                                                   "startGraceSeconds": 3})
        self.clock, self.schedule, self.kernel = FakeClock(), Scheduler(), FakeKernel()
        self.hosts: list[FakeHost] = []
        self.sup = Supervisor(SandboxPolicy.from_manifest(m, tmp), 1, self.kernel,
                              tmp / "home", host_factory=self._factory, rules=RULES,
                              clock=self.clock, schedule=self.schedule)

    def _factory(self, policy: SandboxPolicy, ctx: HostContext) -> FakeHost:
        self.hosts.append(FakeHost(ctx, 100 + len(self.hosts)))
        return self.hosts[-1]

    def beat(self) -> Any:
        return self.sup._api("system.heartbeat", None).result(0)


def test_a_missed_heartbeat_ends_the_run_as_unresponsive_and_restarts_it(
        tmp_path: Path) -> None:
    rig = WatchRig(tmp_path)
    rig.sup.start()
    try:
        assert rig.schedule.delays == [8.0]  # start grace 3 + heartbeatSeconds 5
        rig.clock.now += 6
        assert rig.beat() == {"watched": True, "heartbeatSeconds": 5}  # due at +11 now
        rig.clock.now += 2
        rig.schedule.fire()  # at +8: a beat came, so it re-arms for what is left
        assert rig.schedule.delays[-1] == pytest.approx(3.0) and len(rig.hosts) == 1
        rig.clock.now += 3
        rig.schedule.fire()  # at +11: none came
        assert rig.hosts[0].state.value == "exited"
        assert len(rig.schedule.pending) == 1 and rig.schedule.delays[-1] == 1.0  # backoff
        rig.schedule.fire()  # the restart: a new run, watched from its own start
        assert len(rig.hosts) == 2 and rig.schedule.delays[-1] == 8.0
        assert rig.sup.info()["restarts"] == 1
        rig.clock.now += 8
        rig.schedule.fire()
        rig.schedule.fire()
        assert len(rig.hosts) == 3
    finally:
        rig.sup.close()


def test_the_first_beat_ends_the_start_grace(tmp_path: Path) -> None:
    rig = WatchRig(tmp_path)
    rig.sup.start()
    try:
        rig.clock.now += 1
        rig.beat()  # due at +6, before the grace timer (+8): it is armed again for then
        assert len(rig.schedule.pending) == 1 and rig.schedule.delays[-1] == 5.0
        rig.clock.now += 5
        rig.schedule.fire()
        assert rig.hosts[0].state.value == "exited"  # missed at +6, not at +8
    finally:
        rig.sup.close()


def test_unresponsive_is_final_under_restart_never_and_a_stop_is_still_a_stop(
        tmp_path: Path) -> None:
    rig = WatchRig(tmp_path, restart="never")
    rig.sup.start()
    rig.clock.now += 8
    rig.schedule.fire()
    final = rig.sup.wait(0)
    assert final is not None and final["reason"] == "unresponsive"
    assert "heartbeat" in final["detail"] and rig.kernel.exits[-1]["reason"] == "unresponsive"
    rig.sup.close()

    (tmp_path / "b").mkdir()
    other = WatchRig(tmp_path / "b")
    other.sup.start()
    assert other.sup.stop(1)["reason"] == "stopped"
    assert not other.schedule.pending  # the watchdog is gone with the app
    other.sup.close()


def test_heartbeat_without_a_health_check_is_answered_not_watched(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("")
    kernel, schedule = FakeKernel(), Scheduler()
    sup = Supervisor(SandboxPolicy.from_manifest(manifest(), tmp_path), 1, kernel,
                     tmp_path / "home", host_factory=lambda p, c: FakeHost(c, 7),
                     rules=RULES, clock=FakeClock(), schedule=schedule)
    sup.start()
    try:
        assert sup._api("system.heartbeat", None).result(0) == {"watched": False,
                                                                "heartbeatSeconds": None}
        assert not schedule.pending
    finally:
        sup.close()


def test_config_files_stay_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        AppConfig(tmp_path).set(manifest(env=ENV), "LEVEL", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "config" / "demo.json").stat().st_mode) == 0o600


def test_a_wasm_app_gets_its_configuration_in_its_wasi_environment(tmp_path: Path) -> None:
    from tests.unit.test_wasm_host import guest, make_host, run

    # exit code = the size of the guest's environment (every NAME=value and its NUL)
    extra = """
      (import "wasi_snapshot_preview1" "environ_sizes_get"
        (func $envs (param i32 i32) (result i32)))"""
    body = """
      (drop (call $envs (i32.const 208) (i32.const 212)))
      (call $exit (i32.load (i32.const 212)))"""
    sizes = []
    for app_env in ({}, {"API_KEY": "abc"}):
        host, _, _ = make_host(tmp_path, guest(body, extra=extra))
        host.policy = host.policy.with_app_env(app_env)
        sizes.append(run(host).code)
    base = len("ESTARTER_MODE=hosted\0ESTARTER_APP_ID=t.app\0")
    assert sizes == [base, base + len("API_KEY=abc\0")]
