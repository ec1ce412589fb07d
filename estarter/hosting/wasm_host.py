"""WasmAppHost: one wasm app (a WASI preview1 command) in its own wasmtime Store.

How the manifest's limits map (DESIGN, "Limits enforcement matrix"):

* ``memoryLimitMb`` holds for the module's memories and tables together. wasmtime's
  store limits are per memory and per table, so a module may define at most
  ``MAX_MEMORIES`` memory and ``MAX_TABLES`` tables (more is refused at launch, and
  the store's counts refuse them again at instantiation); its tables get 1/16 of
  the limit between them (8 bytes an element) and its memory the rest. ``memory.grow``
  past it returns -1 inside the guest, and a module whose declared minimum is
  already over it is refused at launch with a LaunchError.
* Interruption uses epochs. The epoch counter belongs to the process's one engine,
  so a shared ticker thread advances it every ``TICK`` seconds while any guest runs,
  and each store has a deadline of one tick plus a *deadline callback* that decides
  for that store alone: trap (stop, ``maxRuntimeSeconds``) or carry on. Stopping one
  app therefore never disturbs another; ``stop`` also advances the epoch at once, so
  a spinning guest traps within milliseconds.
* ``cpuQuota`` (percent of one core; a wasm guest is one thread, so 100 and above
  mean unlimited) is epoch-based throttling, like cgroup ``cpu.max``: the callback
  keeps a token bucket of guest-thread CPU time (``time.thread_time``) refilled at
  quota x wall time, capped at ``CPU_BURST`` seconds of credit, and sleeps the guest
  thread while the bucket is in debt. It is a rate, not a budget, so it never ends an
  app; fuel is off for the reasons given in ``wasm_cache`` (the manifest has no
  deterministic budget to ask for), and reason ``cpu_limit`` is not used by this host.
* ``maxRuntimeSeconds`` is a timer that interrupts the guest with reason ``timeout``.

The guest runs on its own thread, so the owner keeps answering while it spins.
``start`` returns once the instance exists and ``_start`` is running, and raises
LaunchError (without calling ``ctx.on_exit``) if the app cannot start.
``ctx.on_exit`` is called exactly once for an app that started.
"""

from __future__ import annotations

import ctypes
import threading
import time
from pathlib import Path
from typing import Any

import wasmtime
from wasmtime import _bindings as wasmtime_bindings

from ..errors import LaunchError, RuntimeClosed
from ..policy import SandboxPolicy
from .applog import line_rate, tagged
from .base import ExitInfo, ExitReason, HostContext, HostState
from .wasm_abi import MODULE, SIGNATURES, BoundedLog, GuestAbi, LineSplitter, instance_pre
from .wasm_cache import ModuleCache, ModuleInfo, describe_functype, shared_engine

TICK = 0.01  # seconds between epoch increments while any guest runs
CPU_BURST = 0.1  # seconds of CPU credit a throttled guest may bank
START_TIMEOUT = 10.0  # a module's start function must finish within this
MAX_MODULE_BYTES = 64 << 20  # bigger files are refused before compiling (which has a budget)
MAX_TABLE_ELEMENTS = 1 << 20  # a table element costs the host 8 bytes: bound table.grow
TABLE_ELEMENT_BYTES = 8
MAX_MEMORIES = 1  # memories a module may define (multi-memory would multiply the limit)
MAX_TABLES = 4  # tables a module may define
TABLE_SHARE = 16  # tables get 1/16 of memoryLimitMb between them
WASI_MODULE = "wasi_snapshot_preview1"

# wasmtime_store_epoch_deadline_callback is bound but not wrapped by wasmtime-py 50;
# take its ctypes types from the binding so the function pointers match exactly.
_set_deadline_callback = wasmtime_bindings._wasmtime_store_epoch_deadline_callback
_DeadlineCallback = _set_deadline_callback.argtypes[1]
_Finalizer = _set_deadline_callback.argtypes[3]
_CONTINUE = 0  # WASMTIME_UPDATE_DEADLINE_CONTINUE


class _Ticker:
    """Advances the shared engine's epoch every TICK while at least one guest runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        with self._lock:
            self._users += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="wasm-epoch",
                                                daemon=True)
                self._thread.start()

    def release(self) -> None:
        with self._lock:
            self._users -= 1

    def kick(self) -> None:
        """Advance the epoch now, so every running guest consults its callback."""
        shared_engine().increment_epoch()

    def _run(self) -> None:
        engine = shared_engine()
        while True:
            self._wake.wait(TICK)
            with self._lock:
                if self._users <= 0:
                    self._thread = None
                    return
            engine.increment_epoch()


_TICKER = _Ticker()


class WasmAppHost:
    """An AppHost for ``runtime: wasm``. Every method is safe to call from any thread."""

    def __init__(self, policy: SandboxPolicy, ctx: HostContext,
                 cache: ModuleCache | None = None, *, api_timeout: float = 30.0) -> None:
        self.app_id = policy.app_id
        self.policy = policy
        self._ctx = ctx
        self._cache = cache or ModuleCache(ctx.home / "cache" / "wasm")
        self._log = BoundedLog(tagged(ctx), line_rate=line_rate(policy.log_lines_per_second))
        self._stopping = threading.Event()
        self._abi = GuestAbi(ctx.api, self._log, self._stopping, api_timeout)
        self._lock = threading.Lock()
        self._state = HostState.STARTING
        self._started = self._closed = False
        self._interrupt: ExitReason | None = None
        self._interrupt_detail = ""
        self._ready = threading.Event()
        self._launch_error: LaunchError | None = None
        self._done = threading.Event()
        self._exit: ExitInfo | None = None
        self._thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None
        self._notifications_dropped = 0
        self._started_at: float | None = None
        quota = policy.cpu_quota_percent
        self._cpu_rate = quota / 100 if 0 < quota < 100 else 0.0
        self._cpu_tokens = self._cpu_rate * CPU_BURST
        self._cpu_last = (0.0, 0.0)  # (wall, thread cpu) at the last callback

    # -- AppHost -----------------------------------------------------------------------

    @property
    def state(self) -> HostState:
        return self._state

    @property
    def pid(self) -> int | None:
        return None  # the guest has no process of its own

    def start(self) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeClosed(f"{self.app_id}: host is closed")
            if self._started:
                raise LaunchError(f"{self.app_id}: already started")
            self._started = True
        try:
            store, pre = self._prepare()
        except LaunchError as exc:
            self._launch_error = exc
            self._state = HostState.FAILED
            raise
        self._thread = threading.Thread(target=self._main, args=(store, pre),
                                        name=f"wasm-{self.app_id}", daemon=True)
        if self._ctx.on_spawned is not None:  # before the guest runs and logs
            self._ctx.on_spawned(None)
        _TICKER.acquire()
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            self._interrupt_with(ExitReason.CRASHED, "start function ran too long")
            self._ready.wait()
            self._launch_error = LaunchError(
                f"{self.app_id}: the module's start function did not return "
                f"within {START_TIMEOUT:g} s")
        if self._launch_error is not None:
            self._thread.join(5.0)
            self._state = HostState.FAILED
            raise self._launch_error
        if self.policy.max_runtime_seconds > 0:
            self._timer = threading.Timer(
                self.policy.max_runtime_seconds, self._interrupt_with,
                (ExitReason.TIMEOUT, f"maxRuntimeSeconds {self.policy.max_runtime_seconds:g}"))
            self._timer.daemon = True
            self._timer.start()

    def stop(self, grace: float = 5.0) -> ExitInfo:
        """Interrupt the guest (it traps at its next loop or call); idempotent.

        A wasm guest has no shutdown message to ask with, so ``grace`` only bounds
        how long we wait for a guest blocked inside a host call to return.
        """
        if not self._started or self._launch_error is not None:
            with self._lock:
                self._closed = True
                if self._state is HostState.STARTING:
                    self._state = HostState.EXITED
            return self._exit or ExitInfo(None, ExitReason.STOPPED, "never started")
        if threading.current_thread() is self._thread and self._exit is not None:
            return self._exit  # called from on_exit
        if not self._done.is_set():
            self._state = HostState.STOPPING
            self._interrupt_with(ExitReason.STOPPED, "stopped")
        if self._done.wait(max(grace, 1.0)) and self._exit is not None:
            return self._exit
        return ExitInfo(None, ExitReason.STOPPED, "guest still inside a host call")

    def wait(self, timeout: float | None = None) -> ExitInfo | None:
        if not self._started:
            return None
        if threading.current_thread() is self._thread:  # on_exit asking: never self-wait
            return self._exit
        self._done.wait(timeout)
        return self._exit

    def notify(self, method: str, params: Any) -> None:
        # Wasm guests pull their messages (ipc.receive); pushes are dropped and counted.
        self._notifications_dropped += 1

    def info(self) -> dict[str, Any]:
        p = self.policy
        exit_info = self._exit
        return {
            "appId": self.app_id,
            "runtime": "wasm",
            "pid": None,
            "state": self._state.value,
            "startedAt": self._started_at,
            "apiCalls": self._abi.calls,
            "apiCallsRefused": self._abi.api_budget.refused,  # over the api_call rate
            "droppedLogLines": self._log.dropped,
            "notificationsDropped": self._notifications_dropped,
            "exit": exit_info.to_dict() if exit_info else None,
            "limits": {
                "applied": {
                    "memoryLimitBytes": p.memory_limit_bytes or None,
                    "cpuQuotaPercent": p.cpu_quota_percent if self._cpu_rate else None,
                    "maxRuntimeSeconds": p.max_runtime_seconds or None,
                    "network": "no sockets",
                    "filesystem": self._fs_mode() or "none",
                },
                "notApplied": {"maxProcesses": "n/a for wasm"} if p.max_processes else {},
            },
        }

    def close(self) -> None:
        if self._started and not self._done.is_set():
            self.stop()
        with self._lock:
            self._closed = True
        if self._timer is not None:
            self._timer.cancel()

    def __enter__(self) -> WasmAppHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- launch ------------------------------------------------------------------------

    def _prepare(self) -> tuple[wasmtime.Store, wasmtime.InstancePre]:
        module, module_info = self._cache.load_with_info(self._read_module())
        self._check_module(module_info)
        engine = self._cache.engine
        try:
            pre = instance_pre(engine, module)
        except wasmtime.WasmtimeError as exc:  # e.g. a WASI function that does not exist
            raise LaunchError(f"{self.app_id}: cannot link: {_first_cause(str(exc))}") from None
        store = self._abi.new_store(engine)
        memory_bytes, table_elements = store_budget(self.policy.memory_limit_bytes,
                                                    module_info.tables)
        store.set_limits(memory_size=memory_bytes, table_elements=table_elements,
                         tables=MAX_TABLES, memories=MAX_MEMORIES)
        store.set_wasi(self._wasi_config())
        # Keep the callback object alive as long as the store: wasmtime holds its address.
        self._deadline_cb = _DeadlineCallback(self._on_deadline)
        _set_deadline_callback(store.ptr(), self._deadline_cb, None, _Finalizer())  # no finalizer
        store.set_epoch_deadline(1)
        return store, pre

    def _read_module(self) -> bytes:
        path = self.policy.entry
        try:
            with open(path, "rb") as fh:
                raw = fh.read(MAX_MODULE_BYTES + 1)
        except OSError as exc:
            raise LaunchError(f"{self.app_id}: cannot read {path}: {exc.strerror}") from None
        if len(raw) > MAX_MODULE_BYTES:
            raise LaunchError(f"{self.app_id}: {path.name} is over {MAX_MODULE_BYTES} bytes")
        if raw.startswith(b"\0asm") or path.suffix != ".wat":
            return raw
        try:
            return bytes(wasmtime.wat2wasm(raw.decode("utf-8")))
        except (wasmtime.WasmtimeError, UnicodeDecodeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid"
            raise LaunchError(f"{self.app_id}: {path.name} is not valid WAT: {first}") from None

    def _check_module(self, module: ModuleInfo) -> None:
        """Refuse, with a clear message, what instantiation would refuse obscurely."""
        problem = _import_problem(module)
        if problem:
            raise LaunchError(f"{self.app_id}: {problem}")
        if module.memories > MAX_MEMORIES or module.tables > MAX_TABLES:
            raise LaunchError(
                f"{self.app_id}: the module defines {module.memories} memories and "
                f"{module.tables} tables; a wasm app may define at most {MAX_MEMORIES} "
                f"memory and {MAX_TABLES} tables", {"key": "memoryLimitMb"})
        limit = self.policy.memory_limit_bytes
        memory_bytes, _ = store_budget(limit, module.tables)
        if limit > 0 and module.min_memory_bytes > memory_bytes:
            raise LaunchError(
                f"{self.app_id}: the module needs at least {module.min_memory_bytes} bytes "
                f"of memory, over its memoryLimitMb of {limit} bytes (its tables take "
                f"{limit - memory_bytes} of them)", {"key": "memoryLimitMb"})
        if "_start" not in module.exports:
            raise LaunchError(f"{self.app_id}: no _start export; a wasm app must be a "
                              f"WASI command")

    def _fs_mode(self) -> str:
        # Read-only even with fs.write: writes go through fs.write, which holds the
        # diskQuotaMb total; a writable preopen would not (DESIGN, "Budgets").
        return "read-only" if self.policy.allows("fs.read") or self.policy.allows(
            "fs.write") else ""

    def _wasi_config(self) -> wasmtime.WasiConfig:
        wasi = wasmtime.WasiConfig()
        wasi.argv = [self.app_id, *self.policy.args]
        # The operator's configuration (manifest env), then estarter's own variables.
        env = {**dict(self.policy.app_env),
               "ESTARTER_MODE": "hosted", "ESTARTER_APP_ID": self.app_id}
        for key, value in (*self.policy.extra_env, *self._ctx.env.items()):
            if key.startswith("ESTARTER_") and key not in env:
                env[key] = value
        wasi.env = list(env.items())
        self._stdout = LineSplitter(self._log, "info", "stdout")
        self._stderr = LineSplitter(self._log, "warning", "stderr")
        wasi.stdout_custom = self._stdout.write
        wasi.stderr_custom = self._stderr.write
        mode = self._fs_mode()
        if mode and self._ctx.direct_zones:  # not on a node without one view (storage.py)
            appdata = Path(self._ctx.appdata)
            try:
                appdata.mkdir(parents=True, exist_ok=True)
                wasi.preopen_dir(str(appdata), "/appdata", fs_mutable=False)
            except (OSError, wasmtime.WasmtimeError) as exc:
                raise LaunchError(f"{self.app_id}: cannot open appdata {appdata}: {exc}") from None
        return wasi

    # -- the guest thread --------------------------------------------------------------

    def _main(self, store: wasmtime.Store, pre: wasmtime.InstancePre) -> None:
        try:
            try:
                instance = pre.instantiate(store)
                memory = instance.exports(store).get("memory")
                self._abi.memory = memory if isinstance(memory, wasmtime.Memory) else None
                start = instance.exports(store)["_start"]
                assert isinstance(start, wasmtime.Func)
            except Exception as exc:  # every failure here is a launch error
                self._launch_error = LaunchError(
                    f"{self.app_id}: cannot instantiate: {_first_cause(str(exc))}")
                return
            finally:
                self._ready.set()
            self._started_at = time.time()
            self._state = HostState.RUNNING
            self._finish(self._run(store, start))
        finally:
            _TICKER.release()

    def _run(self, store: wasmtime.Store, start: wasmtime.Func) -> ExitInfo:
        code: int | None
        trap: BaseException | None
        try:
            start(store)
            code, trap = 0, None
        except wasmtime.ExitTrap as exc:
            code, trap = exc.code, None
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            code, trap = None, exc
        except Exception as exc:  # a host bug is reported as a crash
            code, trap = None, exc
        finally:
            self._stdout.flush()
            self._stderr.flush()
        if self._interrupt is not None:
            return ExitInfo(code, self._interrupt, self._interrupt_detail)
        if trap is not None:
            text = str(trap).strip()
            self._log.line("error", f"trap: {text}", "estarter")
            return ExitInfo(None, ExitReason.CRASHED, f"trap: {_first_cause(text)}")
        if code == 0:
            return ExitInfo(0, ExitReason.EXITED)
        return ExitInfo(code, ExitReason.CRASHED, f"exit code {code}")

    def _finish(self, info: ExitInfo) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._exit = info
        self._state = HostState.EXITED if not info.failed else HostState.FAILED
        # on_exit before done: whoever wakes from wait() finds the owner already told.
        try:
            self._ctx.on_exit(info)
        except Exception as exc:  # the owner's bug must not hide the exit
            self._log.line("error", f"on_exit failed: {exc!r}", "estarter")
        finally:
            self._done.set()

    def _interrupt_with(self, reason: ExitReason, detail: str) -> None:
        """The first reason wins (a stop racing the runtime deadline, say)."""
        with self._lock:
            if self._interrupt is not None or self._done.is_set():
                return
            self._interrupt_detail = detail
            self._interrupt = reason
        self._stopping.set()
        _TICKER.kick()

    def _on_deadline(self, _ctx: int, _data: int, delta: Any, kind: Any) -> int:
        """Runs on the guest thread at each epoch tick: trap (an error pointer) or go on."""
        try:
            if self._interrupt is not None:
                err = wasmtime_bindings.wasmtime_error_new(
                    f"interrupted: {self._interrupt.value}".encode())
                return ctypes.cast(err, ctypes.c_void_p).value or 0
            if self._cpu_rate:
                self._throttle()
        except Exception:  # never unwind through wasmtime
            pass
        delta[0] = 1
        kind[0] = _CONTINUE
        return 0

    def _throttle(self) -> None:
        now, cpu = time.monotonic(), time.thread_time()
        last_now, last_cpu = self._cpu_last
        self._cpu_last = (now, cpu)
        if last_now == 0.0:
            return
        refill = self._cpu_rate * (now - last_now)
        self._cpu_tokens = min(self._cpu_rate * CPU_BURST, self._cpu_tokens + refill)
        self._cpu_tokens -= cpu - last_cpu
        if self._cpu_tokens < 0:
            # Sleep off the debt; stop and timeout wake us through the same event.
            self._stopping.wait(-self._cpu_tokens / self._cpu_rate)


_SIGNATURES = {name: describe_functype(ty) for name, ty in SIGNATURES.items()}


def store_budget(limit: int, tables: int) -> tuple[int, int]:
    """(memory bytes, elements per table) so that one memory plus ``tables`` tables
    stay within ``limit`` bytes in total; ``limit`` 0 (unlimited): (-1, the cap)."""
    if limit <= 0:
        return -1, MAX_TABLE_ELEMENTS
    per_table = min(MAX_TABLE_ELEMENTS,
                    limit // TABLE_SHARE // (TABLE_ELEMENT_BYTES * max(1, tables)))
    return limit - tables * per_table * TABLE_ELEMENT_BYTES, per_table


def _import_problem(module: ModuleInfo) -> str:
    """Why the module's imports cannot be satisfied, or "" if they (probably) can."""
    for mod, name, kind in module.imports:
        where = f"{mod}.{name}"
        if mod == MODULE:
            want = _SIGNATURES.get(name)
            if want is None:
                return f"missing import {where}: the host provides only {', '.join(SIGNATURES)}"
            if kind != want:
                return f"import {where} has the wrong type ({kind}, expected {want})"
        elif mod != WASI_MODULE:
            return (f"unknown import module {mod!r} (import {where}); wasm apps may import "
                    f"only {MODULE} and {WASI_MODULE}")
    return ""


def _first_cause(text: str) -> str:
    """The 'Caused by' line of a wasmtime error, else its first line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if "Caused by:" in lines:
        after = lines.index("Caused by:") + 1
        if after < len(lines):
            return lines[after]
    return lines[0] if lines else "trap"


__all__ = ["CPU_BURST", "TICK", "WasmAppHost"]
