"""WasmAppHost with inline WAT guests and a fake kernel (no Ray)."""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from estarter.errors import EstarterError, LaunchError, PermissionDenied
from estarter.hosting.base import AppHost, ExitInfo, ExitReason, HostContext, HostState
from estarter.hosting.wasm_abi import BoundedLog
from estarter.hosting.wasm_cache import ModuleCache
from estarter.hosting.wasm_host import WasmAppHost
from estarter.manifest import AppManifest
from estarter.policy import SandboxPolicy

# -- fakes ------------------------------------------------------------------------------

NEEDS = {"ui.notify": "ui.notification", "fs.read": "fs.read", "system.ping": None,
         "test.echo": None, "test.big": None, "test.block": None}


class FakeKernel:
    """Serves a few methods, checks a permission set, records every call."""

    def __init__(self, granted: frozenset[str]) -> None:
        self.granted = granted
        self.calls: list[tuple[str, Any]] = []
        self.notifications: list[dict[str, Any]] = []
        self.blocked: list[concurrent.futures.Future[Any]] = []

    def api(self, method: str, params: Any) -> concurrent.futures.Future[Any]:
        self.calls.append((method, params))
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        if method == "test.block":  # never answered
            self.blocked.append(future)
            return future
        try:
            future.set_result(self._serve(method, params))
        except EstarterError as exc:
            future.set_exception(exc)
        return future

    def _serve(self, method: str, params: Any) -> Any:
        if method not in NEEDS:
            raise EstarterError(f"no method {method}")
        need = NEEDS[method]
        if need is not None and need not in self.granted:
            raise PermissionDenied.for_permission(need, method)
        if method == "system.ping":
            return {"pong": True, "time": 1}
        if method == "ui.notify":
            self.notifications.append(params)
            return {"id": len(self.notifications)}
        if method == "test.big":
            return "x" * (2 << 20)
        return params


class Recorder:
    """The owner's side of HostContext: log lines and exits, with waits on events."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []
        self.exits: list[ExitInfo] = []
        self._cond = threading.Condition()

    def log(self, level: str, message: str) -> None:
        with self._cond:
            self.lines.append((level, message))
            self._cond.notify_all()

    def on_exit(self, info: ExitInfo) -> None:
        self.exits.append(info)

    def text(self) -> str:
        return "\n".join(message for _, message in self.lines)

    def wait_log(self, needle: str, timeout: float = 5.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: needle in self.text(), timeout)


def make_host(tmp_path: Path, wat: str | bytes, *, name: str = "app.wat",
              cache: ModuleCache | None = None, env: dict[str, str] | None = None,
              **manifest: Any) -> tuple[WasmAppHost, FakeKernel, Recorder]:
    app_dir = tmp_path / f"app-{time.monotonic_ns()}"
    app_dir.mkdir()
    entry = app_dir / name
    if isinstance(wat, bytes):
        entry.write_bytes(wat)
    else:
        entry.write_text(wat)
    m = AppManifest.model_validate({"id": "t.app", "runtime": "wasm", "entry": name, **manifest})
    policy = SandboxPolicy.from_manifest(m, app_dir, granted=m.requested_permissions)
    kernel, rec = FakeKernel(policy.granted), Recorder()
    ctx = HostContext(api=kernel.api, log=rec.log, on_exit=rec.on_exit, home=tmp_path / "home",
                      appdata=tmp_path / "appdata", env=env or {})
    return WasmAppHost(policy, ctx, cache), kernel, rec


def run(host: WasmAppHost, timeout: float = 10.0) -> ExitInfo:
    try:
        host.start()
        info = host.wait(timeout)
        assert info is not None, "guest did not end"
        return info
    finally:
        host.close()


def wat_string(text: str) -> str:
    return "".join(f"\\{b:02x}" for b in text.encode())


def guest(body: str, data: dict[int, str] | None = None, pages: int = 1,
          extra: str = "") -> str:
    """A WASI command importing the estarter ABI; $call(ptr, len) returns api_call's value."""
    segments = "\n".join(f'(data (i32.const {at}) "{wat_string(text)}")'
                         for at, text in (data or {}).items())
    return f"""(module
      (import "estarter" "log" (func $log (param i32 i32 i32)))
      (import "estarter" "api_call" (func $call (param i32 i32) (result i32)))
      (import "estarter" "api_response" (func $resp (param i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      {extra}
      (memory (export "memory") {pages})
      {segments}
      ;; calls the request at ptr/len, then logs the response (copied to 32768)
      (func $call_log (param i32 i32)
        (local $n i32)
        (local.set $n (call $call (local.get 0) (local.get 1)))
        (if (i32.lt_s (local.get $n) (i32.const 0)) (then unreachable))
        (call $log (i32.const 1) (i32.const 32768)
                   (call $resp (i32.const 32768) (i32.const 16384))))
      ;; traps unless api_call(ptr, len) returns want
      (func $expect (param $ptr i32) (param $len i32) (param $want i32)
        (if (i32.ne (call $call (local.get $ptr) (local.get $len)) (local.get $want))
          (then unreachable)))
      (func (export "_start") {body}))"""


def call_log(at: int, text: str) -> str:
    return f"(call $call_log (i32.const {at}) (i32.const {len(text.encode())}))"


PING = '{"method":"system.ping","params":{}}'
NOTIFY = '{"method":"ui.notify","params":{"title":"t","message":"hi"}}'
SURVIVED = "survived"
SPIN = "(loop $l (br $l))"


def say(at: int, text: str) -> str:
    return f"(call $log (i32.const 1) (i32.const {at}) (i32.const {len(text)}))"


# -- the happy path ---------------------------------------------------------------------


def test_hello_path(tmp_path: Path) -> None:
    wat = guest(call_log(0, PING) + call_log(256, NOTIFY), {0: PING, 256: NOTIFY})
    host, kernel, rec = make_host(tmp_path, wat, permissions=["ui.notification"])
    assert isinstance(host, AppHost)
    info = run(host)
    assert (info.code, info.reason) == (0, ExitReason.EXITED)
    assert rec.exits == [info]  # exactly once
    assert host.state is HostState.EXITED
    assert [m for m, _ in kernel.calls] == ["system.ping", "ui.notify"]
    assert kernel.notifications == [{"title": "t", "message": "hi"}]
    assert '{"result":{"pong":true,"time":1}}' in rec.text()
    assert host.info()["apiCalls"] == 2


def test_permission_absent_is_32001_in_the_response(tmp_path: Path) -> None:
    req = '{"method":"fs.read","params":{"path":"/appdata/x"}}'
    host, kernel, rec = make_host(tmp_path, guest(call_log(0, req), {0: req}),
                                  permissions=["ui.notification"])
    assert run(host).reason is ExitReason.EXITED
    response = json.loads(next(m for _, m in rec.lines if m.startswith("{")))
    assert response["error"]["code"] == -32001
    assert response["error"]["data"] == {"permission": "fs.read"}
    assert kernel.calls == [("fs.read", {"path": "/appdata/x"})]


def test_proc_exit_code_and_stdout_argv_env(tmp_path: Path) -> None:
    # exit code = 10 * argc + envc; prints a line on stdout.
    extra = """
      (import "wasi_snapshot_preview1" "args_sizes_get" (func $args (param i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "environ_sizes_get"
        (func $envs (param i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_write"
        (func $write (param i32 i32 i32 i32) (result i32)))"""
    body = """
      (i32.store (i32.const 100) (i32.const 0)) (i32.store (i32.const 104) (i32.const 15))
      (drop (call $write (i32.const 1) (i32.const 100) (i32.const 1) (i32.const 108)))
      (drop (call $args (i32.const 200) (i32.const 204)))
      (drop (call $envs (i32.const 208) (i32.const 212)))
      (call $exit (i32.add (i32.mul (i32.load (i32.const 200)) (i32.const 10))
                           (i32.load (i32.const 208))))"""
    host, _, rec = make_host(tmp_path, guest(body, {0: "hello, stdout!\n"}, extra=extra),
                             args=["a", "b"], env={"ESTARTER_X": "1", "HOME": "/root"})
    info = run(host)
    # argv = [app id, a, b]; env = ESTARTER_MODE, ESTARTER_APP_ID, ESTARTER_X (no HOME)
    assert (info.code, info.reason) == (33, ExitReason.CRASHED)
    assert ("info", "hello, stdout!") in rec.lines


# -- interruption -----------------------------------------------------------------------


def test_stop_interrupts_an_endless_loop_while_the_host_answers(tmp_path: Path) -> None:
    host, _, rec = make_host(tmp_path, guest(SPIN))
    host.start()
    try:
        assert host.wait(0.2) is None
        snapshot = host.info()  # answers while the guest spins
        assert snapshot["state"] == "running"
        t0 = time.monotonic()
        info = host.stop(grace=1.0)
        assert time.monotonic() - t0 < 30  # the epoch interrupt ends it; not the grace
        assert info.reason is ExitReason.STOPPED
        assert host.stop() == info  # idempotent
        assert rec.exits == [info]
    finally:
        host.close()


def test_max_runtime_times_out_within_a_second_of_the_deadline(tmp_path: Path) -> None:
    host, _, rec = make_host(tmp_path, guest(SPIN), maxRuntimeSeconds=1)
    t0 = time.monotonic()
    info = run(host, timeout=60)
    assert info.reason is ExitReason.TIMEOUT
    assert time.monotonic() - t0 >= 1.0  # never before the deadline
    assert rec.exits == [info]


def test_stop_one_host_leaves_the_other_running(tmp_path: Path) -> None:
    first, _, _ = make_host(tmp_path, guest(SPIN))
    second, _, _ = make_host(tmp_path, guest(SPIN))
    first.start()
    second.start()
    try:
        assert first.stop(grace=1.0).reason is ExitReason.STOPPED
        assert second.wait(0.3) is None
        assert second.state is HostState.RUNNING
    finally:
        first.close()
        second.close()
    assert second.wait(1) == ExitInfo(None, ExitReason.STOPPED, "stopped")


def test_stop_is_prompt_while_the_guest_waits_on_an_api_call(tmp_path: Path) -> None:
    req = '{"method":"test.block","params":{}}'
    host, kernel, _ = make_host(tmp_path, guest(call_log(0, req) + SPIN, {0: req}))
    host.start()
    try:
        deadline = time.monotonic() + 5
        while not kernel.blocked and time.monotonic() < deadline:
            time.sleep(0.01)
        t0 = time.monotonic()
        assert host.stop(grace=1.0).reason is ExitReason.STOPPED
        assert time.monotonic() - t0 < 30  # a blocked host call does not hold the stop
        assert kernel.blocked[0].cancelled()
    finally:
        host.close()


def test_api_timeout_answers_32004(tmp_path: Path) -> None:
    req = '{"method":"test.block","params":{}}'
    host, _, rec = make_host(tmp_path, guest(call_log(0, req), {0: req}))
    host._abi._api_timeout = 0.2  # the constructor's api_timeout, shortened for the test
    assert run(host).reason is ExitReason.EXITED
    assert '"code":-32004' in rec.text()


def test_cpu_quota_throttles_a_spinning_guest(tmp_path: Path) -> None:
    host, _, _ = make_host(tmp_path, guest(SPIN), cpuQuota=20)
    host.start()
    try:
        t0, c0 = time.monotonic(), time.process_time()
        assert host.wait(1.0) is None
        share = (time.process_time() - c0) / (time.monotonic() - t0)
    finally:
        host.close()
    # A ceiling, like cgroup cpu.max: on a loaded machine the guest may get less.
    assert share < 0.3, share


# -- memory -----------------------------------------------------------------------------


def test_memory_grow_past_the_limit_fails_inside_the_guest(tmp_path: Path) -> None:
    body = f"""
      (if (i32.ne (memory.grow (i32.const 64)) (i32.const -1)) (then unreachable))
      (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then unreachable))
      {say(0, SURVIVED)}"""
    host, _, rec = make_host(tmp_path, guest(body, {0: SURVIVED}), memoryLimitMb=1)
    assert run(host).reason is ExitReason.EXITED
    assert SURVIVED in rec.text()


def test_minimum_memory_over_the_limit_is_refused_at_launch(tmp_path: Path) -> None:
    host, _, rec = make_host(tmp_path, guest("", pages=32), memoryLimitMb=1)
    with pytest.raises(LaunchError, match="memoryLimitMb"):
        host.start()
    assert rec.exits == []
    assert host.state is HostState.FAILED
    host.close()


# -- hostile guests ---------------------------------------------------------------------


def test_pointer_or_length_outside_memory_answers_minus_1(tmp_path: Path) -> None:
    body = f"""
      (call $expect (i32.const 70000) (i32.const 4) (i32.const -1))
      (call $expect (i32.const 65530) (i32.const 10) (i32.const -1))
      (call $expect (i32.const -16) (i32.const 32) (i32.const -1))
      (if (i32.ne (call $resp (i32.const 65535) (i32.const 2)) (i32.const -1))
        (then unreachable))
      (call $log (i32.const 1) (i32.const 65000) (i32.const 1000))
      {say(0, SURVIVED)}"""
    host, kernel, rec = make_host(tmp_path, guest(body, {0: SURVIVED}))
    info = run(host)
    assert (info.code, info.reason) == (0, ExitReason.EXITED)
    assert SURVIVED in rec.text()
    assert kernel.calls == []


def test_a_2gib_length_answers_minus_1(tmp_path: Path) -> None:
    body = f"""
      (call $expect (i32.const 0) (i32.const 0x80000000) (i32.const -1))
      (call $expect (i32.const 0) (i32.const -1) (i32.const -1))
      {say(0, SURVIVED)}"""
    host, _, rec = make_host(tmp_path, guest(body, {0: SURVIVED}))
    assert run(host).reason is ExitReason.EXITED
    assert SURVIVED in rec.text()


def test_request_over_the_cap_answers_minus_2(tmp_path: Path) -> None:
    body = f"""
      (call $expect (i32.const 0) (i32.const {3 << 19}) (i32.const -2))
      {say(0, SURVIVED)}"""
    host, kernel, rec = make_host(tmp_path, guest(body, {0: SURVIVED}, pages=32))
    assert run(host).reason is ExitReason.EXITED
    assert SURVIVED in rec.text()
    assert kernel.calls == []


@pytest.mark.parametrize("request_text", [
    "hello", "[1, 2]", '{"method": 5}', '{"params": {}}', "\udcff\udcfe"])
def test_not_json_answers_minus_3(tmp_path: Path, request_text: str) -> None:
    raw = request_text.encode("utf-8", "surrogateescape")
    segment = "".join(f"\\{b:02x}" for b in raw)
    body = f"""
      (call $expect (i32.const 100) (i32.const {len(raw)}) (i32.const -3))
      (if (i32.ne (call $resp (i32.const 200) (i32.const 64)) (i32.const 0))
        (then unreachable))
      {say(0, SURVIVED)}"""
    wat = guest(body, {0: SURVIVED}).replace(
        "(memory (export", f'(data (i32.const 100) "{segment}")\n(memory (export', 1)
    host, kernel, rec = make_host(tmp_path, wat)
    assert run(host).reason is ExitReason.EXITED
    assert SURVIVED in rec.text()
    assert kernel.calls == []


def test_response_over_the_cap_becomes_an_error_response(tmp_path: Path) -> None:
    req = '{"method":"test.big","params":{}}'
    host, _, rec = make_host(tmp_path, guest(call_log(0, req), {0: req}))
    assert run(host).reason is ExitReason.EXITED
    assert '"code":-32003' in rec.text()


@pytest.mark.parametrize(("imports", "message"), [
    ('(import "estarter" "nope" (func (param i32)))', "missing import estarter.nope"),
    ('(import "estarter" "log" (func (param i32)))', "wrong type"),
    ('(import "wasi_snapshot_preview1" "no_such_call" (func))', "no_such_call"),
    ('(import "env" "malloc" (func (param i32) (result i32)))', "unknown import module 'env'"),
])
def test_bad_imports_are_refused_at_launch(tmp_path: Path, imports: str, message: str) -> None:
    wat = f'(module {imports} (memory (export "memory") 1) (func (export "_start")))'
    host, _, rec = make_host(tmp_path, wat)
    with pytest.raises(LaunchError, match=message):
        host.start()
    assert rec.exits == []
    host.close()


@pytest.mark.parametrize("raw", [b"\0asm\x01\0\0\0garbage", b"hello", b""])
def test_invalid_bytes_are_refused_at_launch(tmp_path: Path, raw: bytes) -> None:
    host, _, _ = make_host(tmp_path, raw, name="app.wasm")
    with pytest.raises(LaunchError, match="not a valid WebAssembly module"):
        host.start()
    host.close()


def test_no_start_export_is_refused(tmp_path: Path) -> None:
    host, _, _ = make_host(tmp_path, '(module (memory (export "memory") 1))')
    with pytest.raises(LaunchError, match="_start"):
        host.start()
    host.close()


def test_unbounded_recursion_crashes_and_the_host_is_unharmed(tmp_path: Path) -> None:
    wat = guest("(call $down)", extra="(func $down (call $down))")
    host, _, rec = make_host(tmp_path, wat)
    info = run(host)
    assert info.reason is ExitReason.CRASHED
    assert "call stack exhausted" in info.detail
    assert "trap:" in rec.text()
    assert rec.exits == [info]
    hello, _, rec2 = make_host(tmp_path, guest(call_log(0, PING), {0: PING}))
    assert run(hello).reason is ExitReason.EXITED
    assert '"pong":true' in rec2.text()


def test_a_start_function_that_spins_is_a_launch_error(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from estarter.hosting import wasm_host

    monkeypatch.setattr(wasm_host, "START_TIMEOUT", 0.2)
    wat = guest("", extra="(func $spin (loop $l (br $l))) (start $spin)")
    host, _, rec = make_host(tmp_path, wat)
    with pytest.raises(LaunchError, match="start function"):
        host.start()
    assert rec.exits == []
    host.close()


# -- WASI files by permission -----------------------------------------------------------

OPEN = """
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_dir_name"
    (func $prestat_name (param i32 i32 i32) (result i32)))"""
# path_open(fd 3 = the first preopen, "hello.txt", rights); exits with the errno if it fails.
OPEN_AND_READ = """
  (local $err i32)
  (local.set $err (call $open (i32.const 3) (i32.const 0) (i32.const 0) (i32.const 9)
                              (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0)
                              (i32.const 100)))
  (if (local.get $err) (then (call $exit (local.get $err))))
  ;; one iovec at 200 -> 1024 bytes at 4096; nread at 208
  (i32.store (i32.const 200) (i32.const 4096)) (i32.store (i32.const 204) (i32.const 1024))
  (local.set $err (call $read (i32.load (i32.const 100)) (i32.const 200) (i32.const 1)
                              (i32.const 208)))
  (if (local.get $err) (then (call $exit (i32.add (i32.const 100) (local.get $err)))))
  (call $log (i32.const 1) (i32.const 4096) (i32.load (i32.const 208)))
  ;; now try to create a file: must fail unless fs.write
  (local.set $err (call $open (i32.const 3) (i32.const 0) (i32.const 16) (i32.const 7)
                              (i32.const 1) (i64.const 64) (i64.const 0) (i32.const 0)
                              (i32.const 100)))
  (if (i32.eqz (local.get $err)) (then (call $exit (i32.const 77))))"""


def test_without_fs_read_appdata_is_not_there(tmp_path: Path) -> None:
    wat = guest(OPEN_AND_READ, {0: "hello.txt", 16: "new.txt"}, extra=OPEN)
    host, _, _ = make_host(tmp_path, wat, permissions=["ui.notification"])
    (tmp_path / "appdata").mkdir()
    (tmp_path / "appdata" / "hello.txt").write_text("secret")
    info = run(host)
    assert info.code == 8  # EBADF: there is no preopened directory at all
    assert host.info()["limits"]["applied"]["filesystem"] == "none"


def test_with_fs_read_appdata_is_read_only(tmp_path: Path) -> None:
    wat = guest(OPEN_AND_READ, {0: "hello.txt", 16: "new.txt"}, extra=OPEN)
    host, _, rec = make_host(tmp_path, wat, permissions=["fs.read"])
    (tmp_path / "appdata").mkdir()
    (tmp_path / "appdata" / "hello.txt").write_text("hello from appdata")
    info = run(host)
    assert ("info", "hello from appdata") in rec.lines
    # _start returns (code 0) only if creating new.txt failed; 77 means it succeeded.
    assert (info.code, info.reason) == (0, ExitReason.EXITED)
    assert not (tmp_path / "appdata" / "new.txt").exists()


def test_with_fs_write_appdata_is_still_read_only(tmp_path: Path) -> None:
    # Writes go through fs.write, which holds diskQuotaMb in total (DESIGN, "Budgets").
    wat = guest(OPEN_AND_READ, {0: "hello.txt", 16: "new.txt"}, extra=OPEN)
    host, _, rec = make_host(tmp_path, wat, permissions=["fs.read", "fs.write"])
    (tmp_path / "appdata").mkdir()
    (tmp_path / "appdata" / "hello.txt").write_text("hi")
    info = run(host)
    assert ("info", "hi") in rec.lines
    assert (info.code, info.reason) == (0, ExitReason.EXITED)  # the create failed
    assert not (tmp_path / "appdata" / "new.txt").exists()
    assert host.info()["limits"]["applied"]["filesystem"] == "read-only"


# -- module cache -----------------------------------------------------------------------

CACHED = guest(call_log(0, PING), {0: PING})


def _cache_run(tmp_path: Path, root: Path) -> ModuleCache:
    cache = ModuleCache(root)
    host, _, _ = make_host(tmp_path, CACHED, cache=cache)
    assert run(host).reason is ExitReason.EXITED
    return cache


def test_second_load_deserialises_instead_of_compiling(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    first = _cache_run(tmp_path, root)
    assert (first.statistics().compiled, first.statistics().disk_hits) == (1, 0)
    second = _cache_run(tmp_path, root)  # a new process's cache: nothing in memory
    assert (second.statistics().compiled, second.statistics().disk_hits) == (0, 1)
    host, _, _ = make_host(tmp_path, CACHED, cache=second)
    assert run(host).reason is ExitReason.EXITED
    assert second.statistics().memory_hits == 1


def test_default_cache_lives_under_home(tmp_path: Path) -> None:
    host, _, _ = make_host(tmp_path, CACHED)
    run(host)
    assert list((tmp_path / "home" / "cache" / "wasm").glob("*.cwasm"))


@pytest.mark.parametrize("damage", ["flip", "truncate", "foreign", "empty"])
def test_corrupt_or_foreign_entry_is_rebuilt(tmp_path: Path, damage: str) -> None:
    root = tmp_path / "cache"
    _cache_run(tmp_path, root)
    (entry,) = root.glob("*.cwasm")
    raw = bytearray(entry.read_bytes())
    if damage == "flip":
        raw[len(raw) // 2] ^= 0xFF
    elif damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "foreign":  # a valid entry of another module under this key
        other = ModuleCache(tmp_path / "other")
        other.load(b"\0asm\x01\0\0\0")
        (foreign,) = (tmp_path / "other").glob("*.cwasm")
        raw = bytearray(foreign.read_bytes())
    else:
        raw = bytearray()
    entry.write_bytes(bytes(raw))
    cache = _cache_run(tmp_path, root)
    stats = cache.statistics()
    assert (stats.rebuilt, stats.compiled, stats.disk_hits) == (1, 1, 0)
    assert _cache_run(tmp_path, root).statistics().disk_hits == 1  # the rebuilt entry is good


# -- logs -------------------------------------------------------------------------------


def test_log_volume_is_bounded() -> None:
    lines: list[tuple[str, str]] = []
    now = [0.0]
    log = BoundedLog(lambda level, msg, stream: lines.append((level, msg)), rate=100,
                     burst=1000, clock=lambda: now[0])
    for _ in range(1000):
        log.line("info", "x" * 99)
    assert len(lines) == 11 and lines[-1][1].startswith("[1 log lines dropped")
    now[0] += 10.0
    log.line("info", "after")
    assert lines[-2][1].startswith("[989 log lines dropped")
    assert lines[-1] == ("info", "after")
