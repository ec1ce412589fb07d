"""Hostile wasm apps against what apps share (issue 10, part 2): real wasm, a fake
kernel, no Ray. The native ones, and the rig, are in tests/host/test_hostile_budgets.py;
these live here because wasm engines must not be created before the integration
tests' ray.init (see that module's docstring)."""

from __future__ import annotations

import threading
import time

import pytest
import wasmtime

from estarter.errors import LaunchError
from estarter.hosting.base import ExitReason
from estarter.hosting.wasm_abi import API_CALL_BURST, API_CALLS_PER_SECOND
from estarter.hosting.wasm_cache import ModuleCache
from estarter.hosting.wasm_host import MAX_MEMORIES
from tests.host.test_hostile_budgets import MIB, Rig, ended, neighbour_answers, rig

__all__ = ["rig"]  # the fixture, shared with the native tests


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
    assert time.monotonic() - t0 < 60  # refused at the budget, not after compiling
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

