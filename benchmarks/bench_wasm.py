"""DESIGN performance target 4: the wasm host's overhead over raw wasmtime-py.

1. A guest ``api_call`` to a supervisor-local method (the api returns an already
   completed Future) vs a call of an empty Python host import, per call: <= 2x.
   Also reported: the full round trip (``api_call`` + ``api_response``) vs two empty
   imports, since a guest that wants the data makes both calls.
2. Instantiation of hello-wasm through the host's path (read, hash, module cache,
   store limits, deadline callback, WASI by permission, the estarter imports) vs raw
   wasmtime-py instantiation of an already-compiled Module with the same imports:
   <= 1.5x, from the process's cache (the like-for-like case). Also reported: a
   fresh process's first launch from the disk cache (read, HMAC check, deserialise,
   link, instantiate) vs raw ``Module.deserialize`` of the same blob plus instantiate.

Both sides run in the same process and run, many iterations; medians are reported.
Run: ``python -m benchmarks.bench_wasm``.
"""

from __future__ import annotations

import concurrent.futures
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import wasmtime

from estarter.hosting.base import HostContext
from estarter.hosting.wasm_abi import SIGNATURES, BoundedLog, GuestAbi, instance_pre
from estarter.hosting.wasm_cache import ModuleCache, shared_engine
from estarter.hosting.wasm_host import WasmAppHost
from estarter.manifest import load_manifest
from estarter.policy import SandboxPolicy

Report = Callable[[str, float, float, float, str], None]

ROOT = Path(__file__).resolve().parents[1]
REQUEST = '{"method":"system.ping","params":{}}'
CALLS = 2000  # calls per timed round
ROUNDS = 21
INSTANCES = 300  # instantiations per side


def _median_per_call(fn: Callable[[], None], per: int, rounds: int = ROUNDS) -> float:
    fn()  # warm up
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) / per)
    return statistics.median(samples)


def _loop_module(call: str) -> str:
    data = "".join(f"\\{b:02x}" for b in REQUEST.encode())
    return f"""(module
      (import "estarter" "api_call" (func $call (param i32 i32) (result i32)))
      (import "estarter" "api_response" (func $resp (param i32 i32) (result i32)))
      (memory (export "memory") 1)
      (data (i32.const 0) "{data}")
      (func (export "run") (param $n i32)
        (loop $l
          {call}
          (local.set $n (i32.sub (local.get $n) (i32.const 1)))
          (br_if $l (i32.gt_s (local.get $n) (i32.const 0))))))"""


def _completed_api(method: str, params: Any) -> concurrent.futures.Future[Any]:
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()
    future.set_result({"pong": True})
    return future


def _runner(wat: str, ours: bool) -> Callable[[], None]:
    engine = shared_engine()
    abi = GuestAbi(_completed_api, BoundedLog(lambda _l, _m, _s: None), threading.Event(),
                   api_rate=0)  # the cost of a call, not the budget
    module = wasmtime.Module(engine, wat)
    if ours:
        store = abi.new_store(engine)
        instance = instance_pre(engine, module).instantiate(store)
    else:  # empty Python imports with the same signatures
        store = wasmtime.Store(engine)
        linker = wasmtime.Linker(engine)
        linker.define_func("estarter", "api_call", SIGNATURES["api_call"], lambda p, n: 0)
        linker.define_func("estarter", "api_response", SIGNATURES["api_response"],
                           lambda p, n: 0)
        instance = linker.instantiate(store, module)
    store.set_epoch_deadline(1 << 62)
    memory = instance.exports(store)["memory"]
    assert isinstance(memory, wasmtime.Memory)
    abi.memory = memory  # as WasmAppHost does once instantiated
    run = instance.exports(store)["run"]
    assert isinstance(run, wasmtime.Func)
    return lambda: run(store, CALLS)


def bench_calls(report: Report) -> None:
    only_call = f"(drop (call $call (i32.const 0) (i32.const {len(REQUEST)})))"
    round_trip = only_call + "(drop (call $resp (i32.const 1024) (i32.const 1024)))"
    empty = "(drop (call $call (i32.const 0) (i32.const 0)))"
    empty2 = empty + "(drop (call $resp (i32.const 1024) (i32.const 1024)))"
    pairs = [("wasm api_call (system.ping, local) vs empty host import", only_call, empty, 2.0),
             ("wasm api_call + api_response vs two empty host imports", round_trip, empty2,
              2.0)]
    for name, ours_call, base_call, target in pairs:
        ours = _median_per_call(_runner(_loop_module(ours_call), True), CALLS)
        base = _median_per_call(_runner(_loop_module(base_call), False), CALLS)
        report(name, ours * 1e6, base * 1e6, target, "us/call")


def _raw_instantiate(module: wasmtime.Module) -> None:
    engine = shared_engine()
    store = wasmtime.Store(engine)
    wasi = wasmtime.WasiConfig()
    wasi.argv = ["hello-wasm"]
    store.set_wasi(wasi)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    linker.define_func("estarter", "log", SIGNATURES["log"], lambda *a: None)
    linker.define_func("estarter", "api_call", SIGNATURES["api_call"], lambda *a: 0)
    linker.define_func("estarter", "api_response", SIGNATURES["api_response"], lambda *a: 0)
    linker.instantiate(store, module)


def bench_instantiate(report: Report) -> None:
    app_dir = ROOT / "samples" / "hello-wasm"
    m = load_manifest(app_dir)
    policy = SandboxPolicy.from_manifest(m, app_dir, granted=m.requested_permissions)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        ctx = HostContext(api=_completed_api, log=lambda _l, _m: None, on_exit=lambda _i: None,
                          home=home, appdata=home / "appdata")
        cache_root = home / "cache" / "wasm"
        warm = ModuleCache(cache_root)
        module = warm.load(policy.entry.read_bytes())

        def ours(cache: ModuleCache) -> None:
            host = WasmAppHost(policy, ctx, cache)
            store, pre = host._prepare()
            pre.instantiate(store)

        def timed(fn: Callable[[], None]) -> float:
            samples = []
            for _ in range(INSTANCES):
                t0 = time.perf_counter()
                fn()
                samples.append(time.perf_counter() - t0)
            return statistics.median(samples)

        serialized = cache_root / "raw.cwasm"
        serialized.write_bytes(bytes(module.serialize()))

        def raw_from_disk() -> None:  # what a fresh process does with no checks at all
            _raw_instantiate(wasmtime.Module.deserialize(shared_engine(),
                                                         serialized.read_bytes()))

        ours(warm)
        _raw_instantiate(module)
        raw = timed(lambda: _raw_instantiate(module))
        from_memory = timed(lambda: ours(warm))
        raw_again = timed(lambda: _raw_instantiate(module))
        raw_disk = timed(raw_from_disk)
        from_disk = timed(lambda: ours(ModuleCache(cache_root)))
    base = min(raw, raw_again)  # interleaved twice; the faster is the fairer baseline
    report("wasm instantiation from the module cache (in process) vs raw wasmtime-py",
           from_memory * 1e6, base * 1e6, 1.5, "us")
    report("wasm launch from the disk cache (fresh process) vs raw deserialize+instantiate",
           from_disk * 1e6, raw_disk * 1e6, 1.5, "us")


def run(report: Report) -> None:
    bench_calls(report)
    bench_instantiate(report)


def _print_report(name: str, ours: float, baseline: float, target: float, unit: str) -> None:
    ratio = ours / baseline if baseline else float("inf")
    verdict = "ok" if ratio <= target else "MISSED"
    print(f"{name}: ours {ours:.2f} {unit}, baseline {baseline:.2f} {unit}, "
          f"ratio {ratio:.2f}x (target <= {target:g}x) {verdict}")


if __name__ == "__main__":
    run(_print_report)
