"""Hostile apps against what apps share (issue 10, part 2): real child processes and
real wasm, a fake kernel, no Ray. Each test asserts the safe outcome (refused,
limited, counted, killed) and that a neighbour and the kernel's side are unharmed."""

from __future__ import annotations

import concurrent.futures
import gc
import logging
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import wasmtime

from estarter.errors import EstarterError, LaunchError
from estarter.hosting import limits
from estarter.hosting.applog import LEVELS, LOG_LINE_MAX
from estarter.hosting.base import ExitInfo, ExitReason, HostContext
from estarter.hosting.process_host import ProcessHost
from estarter.hosting.wasm_abi import API_CALL_BURST, API_CALLS_PER_SECOND
from estarter.hosting.wasm_cache import ModuleCache
from estarter.hosting.wasm_host import MAX_MEMORIES, WasmAppHost
from estarter.kernel.events import EventLog
from estarter.manifest import AppManifest
from estarter.policy import SandboxPolicy

MIB = 1 << 20
FACTS = limits.detect()


class FakeKernel:
    """Answers system.ping, records every call; the kernel's event log holds the logs."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.events = EventLog()
        self.lock = threading.Lock()

    def api(self, method: str, params: Any) -> concurrent.futures.Future[Any]:
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self.lock:
            self.calls.append((method, params))
        if method == "system.ping":
            fut.set_result({"pong": True})
        else:
            fut.set_exception(EstarterError.from_dict({"code": -32601, "message": "nope"}))
        return fut

    def lines(self, app_id: str) -> list[dict[str, Any]]:
        return self.events.since(0, app_id=app_id, limit=100_000)["events"]

    def wait_line(self, app_id: str, prefix: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.lines(app_id):
                if e["message"].startswith(prefix):
                    return str(e["message"][len(prefix):])
            self.events.since(self.events.cursor(), 0.2, app_id)
        raise AssertionError(f"{app_id}: no {prefix!r} in {self.lines(app_id)[-5:]}")


class Rig:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.kernel = FakeKernel()
        self.hosts: list[Any] = []

    def ctx(self, app_id: str, **kw: Any) -> HostContext:
        def log(level: str, message: str) -> None:
            self.kernel.events.append("log", app_id, level=level, message=message)

        return HostContext(api=self.kernel.api, log=log, on_exit=lambda info: None,
                           home=self.root / "home", **kw)

    def process(self, app_id: str, source: str, granted: tuple[str, ...] = (),
                **manifest: Any) -> ProcessHost:
        folder = self.root / app_id
        folder.mkdir()
        (folder / "app.py").write_text(textwrap.dedent(source))
        m = AppManifest.model_validate({"id": app_id, "runtime": "python", "entry": "app.py",
                                        "permissions": ["basic", *granted], **manifest})
        policy = SandboxPolicy.from_manifest(m, folder, granted=frozenset(granted))
        zones = {z: self.root / "home" / "vfs" / z / app_id for z in ("appdata", "cache",
                                                                      "temp")}
        host = ProcessHost(policy, self.ctx(app_id, appdata=zones["appdata"], zones=zones))
        self.hosts.append(host)
        return host

    def wasm(self, app_id: str, wat: str | bytes, cache: ModuleCache | None = None,
             **manifest: Any) -> WasmAppHost:
        folder = self.root / app_id
        folder.mkdir()
        entry = folder / ("app.wasm" if isinstance(wat, bytes) else "app.wat")
        entry.write_bytes(wat) if isinstance(wat, bytes) else entry.write_text(wat)
        m = AppManifest.model_validate({"id": app_id, "runtime": "wasm", "entry": entry.name,
                                        **manifest})
        policy = SandboxPolicy.from_manifest(m, folder)
        host = WasmAppHost(policy, self.ctx(app_id, appdata=self.root / "appdata" / app_id),
                           cache)
        self.hosts.append(host)
        return host


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    try:
        yield r
    finally:
        for host in r.hosts:
            host.close()


def ended(host: Any, timeout: float = 60) -> ExitInfo:
    info = host.wait(timeout)
    assert info is not None, "the app did not end"
    return info


def neighbour_answers(rig: Rig, name: str = "neighbour") -> None:
    """A neighbour started after the hostile app still logs and gets answers."""
    host = rig.process(name, """
        import sys
        from sdk import EStarterClient
        c = EStarterClient.connect()
        print("pong:" + str(c.call("system.ping")["pong"]), file=sys.stderr, flush=True)
        """)
    host.start()
    assert rig.kernel.wait_line(name, "pong:") == "True"
    assert ended(host).reason is ExitReason.EXITED


def rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


# -- a. log notifications: capped fields, a budget, counted drops ------------------------

HUGE_LOGS = """
import os, sys
from sdk._wire import encode_frame
big = "L" * ({size})
frame = encode_frame({{"jsonrpc": "2.0", "method": "log",
                      "params": {{"level": big, "message": big}}}})
for _ in range(60):
    os.write(1, frame)
print("flood:done", file=sys.stderr, flush=True)
"""


def test_log_notifications_with_8_mib_fields_keep_the_receiver_small(rig: Rig) -> None:
    # 60 notifications with an 8 MiB level and an 8 MiB message (together just under the
    # 16 MiB message cap): they once took the kernel from 118 MiB to 1.6 GB, for good.
    before = rss()
    host = rig.process("loud", HUGE_LOGS.format(size=8 * MIB - 4096))
    host.start()
    assert ended(host).reason is ExitReason.EXITED
    grown = rss() - before
    lines = rig.kernel.lines("loud")
    assert rig.kernel.wait_line("loud", "flood:") == "done"
    assert grown < 64 * MIB, f"the receiving process grew {grown / MIB:.1f} MiB"
    assert {e["level"] for e in lines} <= set(LEVELS)
    assert max(len(e["message"]) for e in lines) <= LOG_LINE_MAX + len(" [cut]")
    assert rig.kernel.events.statistics()["bytes"] < 4 * MIB
    assert rig.kernel.calls == []  # served by the host: no kernel round trip per line
    print(f"\nreceiver RSS growth after 60 x (8 MiB level + 8 MiB message): "
          f"{grown / MIB:.1f} MiB")
    neighbour_answers(rig)


def test_a_log_flood_is_limited_and_its_drops_counted(rig: Rig) -> None:
    host = rig.process("chatty", """
        import os, sys
        from sdk._wire import encode_frame
        frame = encode_frame({"jsonrpc": "2.0", "method": "log",
                              "params": {"level": "info", "message": "x" * 100}})
        os.write(1, frame * 50_000)
        print("flood:done", file=sys.stderr, flush=True)
        """)
    t0 = time.monotonic()
    host.start()
    info = ended(host)
    elapsed = time.monotonic() - t0
    assert info.reason is ExitReason.EXITED
    dropped = host.info()["messages"]["droppedLogLines"]
    kept = len(rig.kernel.lines("chatty"))
    assert dropped > 0 and kept + dropped >= 50_000
    assert kept <= 5000 + 2000 * elapsed + 10, (kept, elapsed)
    neighbour_answers(rig)


# -- b. answers to nothing: counted, the app ended, our logs stay small ------------------


def test_unknown_responses_end_the_app_and_write_little_log(rig: Rig) -> None:
    written = [0]

    class Count(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            written[0] += len(self.format(record)) + 1

    handler = Count(logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        host = rig.process("liar", """
            import os, sys
            from sdk._wire import encode_frame
            frames = b"".join(encode_frame({"jsonrpc": "2.0", "id": 10**6 + i,
                                            "error": {"code": -32000, "message": "x" * 200}})
                              for i in range(50_000))
            try:
                os.write(1, frames)
            except OSError:
                pass
            print("flood:done", file=sys.stderr, flush=True)
            """)
        host.start()
        info = ended(host)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    app_log = sum(len(e["message"]) + 1 for e in rig.kernel.lines("liar"))
    assert info.reason is ExitReason.PROTOCOL_VIOLATION, info
    assert host.info()["messages"]["malformed"] > 10
    assert written[0] + app_log < MIB, (written[0], app_log)
    print(f"\nlog written for 50,000 unknown responses: {written[0]} B (ours) + "
          f"{app_log} B (app log)")
    neighbour_answers(rig)


# -- c. batches: capped in entries and bytes ---------------------------------------------


def test_batches_over_the_cap_are_refused_and_counted(rig: Rig) -> None:
    host = rig.process("batcher", """
        import json, os, sys
        from sdk._wire import encode_frame, read_frame
        ping = {"jsonrpc": "2.0", "method": "system.ping"}
        for n in (100_000, 101, 100):
            os.write(1, encode_frame([{**ping, "id": i} for i in range(n)]))
            reply = json.loads(read_frame(sys.stdin.buffer))
            if isinstance(reply, dict):
                print(f"batch:{n}:error:{reply['error']['code']}", file=sys.stderr, flush=True)
            else:
                print(f"batch:{n}:answers:{len(reply)}", file=sys.stderr, flush=True)
        """)
    host.start()
    assert ended(host).reason is ExitReason.EXITED
    assert rig.kernel.wait_line("batcher", "batch:100000:") == "error:-32600"
    assert rig.kernel.wait_line("batcher", "batch:101:") == "error:-32600"
    assert rig.kernel.wait_line("batcher", "batch:100:") == "answers:100"
    assert len(rig.kernel.calls) == 100  # not one call of the refused batches was served
    assert host.info()["messages"]["malformed"] == 2


# -- d. direct writes cannot exceed diskQuotaMb ------------------------------------------

DIRECT_WRITES = """
import os, sys
done = 0
for zone in ("appdata", "cache", "temp"):
    for i in range(40):
        try:
            with open(f"/{zone}/f{i}.bin", "wb") as fh:
                fh.write(b"x" * (1 << 20))
            done += 1
        except OSError as exc:
            err = exc.errno
print(f"direct:{done}:{err}", file=sys.stderr, flush=True)
"""


@pytest.mark.skipif(FACTS.bwrap is None, reason="needs the bwrap sandbox")
def test_direct_writes_cannot_exceed_the_disk_quota(rig: Rig) -> None:
    other = rig.root / "home" / "vfs" / "appdata" / "neighbour" / "keep.txt"
    other.parent.mkdir(parents=True)
    other.write_text("neighbour's")
    host = rig.process("filler", DIRECT_WRITES, granted=("fs.read", "fs.write"),
                       diskQuotaMb=2)
    host.start()
    assert ended(host).reason is ExitReason.EXITED
    done, errno = rig.kernel.wait_line("filler", "direct:").split(":")
    on_disk = sum(p.stat().st_size for p in (rig.root / "home" / "vfs").rglob("*.bin"))
    assert on_disk <= 2 * MIB and done == "0" and errno == "30"  # EROFS: read-only zones
    assert other.read_text() == "neighbour's"
    neighbour_answers(rig)


# -- f. wasm: the total of memories and tables, compilation, api_call --------------------


def test_wasm_module_with_many_memories_is_refused(rig: Rig) -> None:
    memories = " ".join("(memory 1)" for _ in range(64))
    host = rig.wasm("many-mem", f'(module {memories} (func (export "_start")))',
                    memoryLimitMb=16)
    with pytest.raises(LaunchError, match=f"at most {MAX_MEMORIES} memory"):
        host.start()


GROW_ALL = """(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (table $t0 1 funcref) (table $t1 1 funcref) (table $t2 1 funcref) (table $t3 1 funcref)
  (func $grow_mem (local $n i32)
    (local.set $n (i32.const 65536))
    (block $done (loop $again
      (br_if $done (i32.eqz (local.get $n)))
      (if (i32.eq (memory.grow (local.get $n)) (i32.const -1))
        (then (local.set $n (i32.shr_u (local.get $n) (i32.const 1)))))
      (br $again))))
  (func $grow_tables (local $n i32)
    (local.set $n (i32.const 0x1000000))
    (block $done (loop $again
      (br_if $done (i32.eqz (local.get $n)))
      (if (i32.eq (table.grow $t0 (ref.null func) (local.get $n)) (i32.const -1))
        (then (local.set $n (i32.shr_u (local.get $n) (i32.const 1)))))
      (br $again)))
    (local.set $n (i32.const 0x1000000))
    (block $done (loop $again
      (br_if $done (i32.eqz (local.get $n)))
      (if (i32.eq (table.grow $t1 (ref.null func) (local.get $n)) (i32.const -1))
        (then (local.set $n (i32.shr_u (local.get $n) (i32.const 1)))))
      (br $again)))
    (local.set $n (i32.const 0x1000000))
    (block $done (loop $again
      (br_if $done (i32.eqz (local.get $n)))
      (if (i32.eq (table.grow $t2 (ref.null func) (local.get $n)) (i32.const -1))
        (then (local.set $n (i32.shr_u (local.get $n) (i32.const 1)))))
      (br $again)))
    (local.set $n (i32.const 0x1000000))
    (block $done (loop $again
      (br_if $done (i32.eqz (local.get $n)))
      (if (i32.eq (table.grow $t3 (ref.null func) (local.get $n)) (i32.const -1))
        (then (local.set $n (i32.shr_u (local.get $n) (i32.const 1)))))
      (br $again))))
  (func (export "_start") (local $total i64)
    (call $grow_mem)
    (call $grow_tables)
    (local.set $total (i64.add
      (i64.mul (i64.extend_i32_u (memory.size)) (i64.const 65536))
      (i64.mul (i64.extend_i32_u (i32.add (i32.add (table.size $t0) (table.size $t1))
                                          (i32.add (table.size $t2) (table.size $t3))))
               (i64.const 8))))
    (if (i64.gt_u (local.get $total) (i64.const {limit})) (then (call $exit (i32.const 1))))
    (if (i64.lt_u (local.get $total) (i64.const {half})) (then (call $exit (i32.const 2))))
    (call $exit (i32.const 0))))"""


def test_wasm_memory_limit_holds_for_memory_and_tables_together(rig: Rig) -> None:
    limit = 16 * MIB
    host = rig.wasm("grower", GROW_ALL.format(limit=limit, half=limit // 2), memoryLimitMb=16)
    host.start()
    info = ended(host, 30)
    # 0: everything grown as far as allowed, and the total is within memoryLimitMb
    # (1: over it; 2: the guest could not even grow to half of it).
    assert (info.code, info.reason) == (0, ExitReason.EXITED), info
    neighbour = rig.wasm("small", '(module (memory 1) (func (export "_start")))',
                         memoryLimitMb=16)
    neighbour.start()
    assert ended(neighbour).reason is ExitReason.EXITED


def _big_module(functions: int, ops: int) -> bytes:
    body = "(local.get 0) " + "(i32.add (local.get 0)) (i32.mul (local.get 0)) " * ops
    funcs = "\n".join(f'(func (export "f{i}") (param i32) (result i32) {body})'
                      for i in range(functions))
    return bytes(wasmtime.wat2wasm(f'(module (memory 1) {funcs} (func (export "_start")))'))


def test_wasm_compilation_has_a_budget(rig: Rig) -> None:
    slow = _big_module(60, 20_000)  # ~7 MB: about 2 s of Cranelift here
    cache = ModuleCache(rig.root / "cache", compile_seconds=0.5)
    host = rig.wasm("slow-compile", slow, cache)
    supervisor_threads = threading.active_count()
    t0 = time.monotonic()
    with pytest.raises(LaunchError, match=r"took over 0\.5 s: refused"):
        host.start()
    assert time.monotonic() - t0 < 5
    assert threading.active_count() <= supervisor_threads  # nothing left compiling here
    # A module over the inline size compiles in the child under the default budget.
    ok = rig.wasm("child-compile", _big_module(1, 20_000), ModuleCache(rig.root / "cache2"))
    ok.start()
    assert ended(ok).reason is ExitReason.EXITED


API_FLOOD = """(module
  (import "estarter" "log" (func $log (param i32 i32 i32)))
  (import "estarter" "api_call" (func $call (param i32 i32) (result i32)))
  (import "estarter" "api_response" (func $resp (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\\"method\\":\\"system.ping\\"}")
  (func (export "_start") (local $i i32) (local $refused i32)
    (loop $again
      ;; {"result":{"pong":true}} is 24 bytes: anything else is the first refusal
      (if (i32.and (i32.ne (call $call (i32.const 0) (i32.const 24)) (i32.const 24))
                   (i32.eqz (local.get $refused)))
        (then (local.set $refused (i32.const 1))
              (call $log (i32.const 1) (i32.const 1024)
                    (call $resp (i32.const 1024) (i32.const 512)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $again (i32.lt_u (local.get $i) (i32.const 20000))))))"""


def test_wasm_api_calls_are_rate_limited(rig: Rig) -> None:
    host = rig.wasm("caller", API_FLOOD)
    t0 = time.monotonic()
    host.start()
    assert ended(host).reason is ExitReason.EXITED
    elapsed = time.monotonic() - t0
    served = len(rig.kernel.calls)
    assert served <= API_CALL_BURST + API_CALLS_PER_SECOND * elapsed + 10, (served, elapsed)
    assert host.info()["apiCallsRefused"] >= 20_000 - served
    (refusal,) = [e["message"] for e in rig.kernel.lines("caller")]
    assert '"code":-32005' in refusal  # busy / rate limited
    neighbour_answers(rig)

