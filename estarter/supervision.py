"""Supervisor: owns one app's host, forwards its API calls, restarts it per policy.

Plain Python, no Ray. It reports to the kernel through a ``KernelPort`` whose
methods never block for long: in Ray mode they are actor calls, in local mode direct
calls. Each host exit is one step: decide (final or restart), act, report.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import logging.handlers
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .errors import Busy, EstarterError, RuntimeClosed
from .hosting.applog import STREAMS, level_of, one_line, tail_file
from .hosting.base import AppHost, ExitInfo, ExitReason, HostContext, HostState
from .hosting.factory import create_host
from .kernel.methods import BLOCKING_METHODS, MAX_WAITING_CALLS, SUPERVISOR_METHODS
from .kinds import RestartPolicy
from .metrics import AppMetrics, outcome_of, process_usage
from .paths import app_zones, log_file, node_local_dir
from .policy import SandboxPolicy
from .protocol.kernel_wire import reply_error
from .storage import LOCAL as LOCAL_ZONES
from .storage import ZoneView

LOG_BUFFER_LINES = 10000
LOG_FILE_BYTES = 5 * 1024 * 1024
LOG_FILE_BACKUPS = 3
FLUSHER_IDLE_SECONDS = 5.0  # how often an idle log flusher looks whether the run ended
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


class KernelPort(Protocol):
    def call(self, app_id: str, method: str, params: Any) -> concurrent.futures.Future[Any]:
        """Forward an API call; the future fails with an EstarterError."""
        ...

    def running(self, app_id: str, run_id: int, info: dict[str, Any]) -> None: ...

    def logs(self, app_id: str, lines: list[tuple[str, str, str]]) -> None:
        """(level, message, stream) lines of the app's log, in order."""
        ...

    def exited(self, app_id: str, run_id: int, exit_info: dict[str, Any]) -> None: ...


# RestartRules fields and the environment variables that override their defaults
# (tests use them to make supervision run in seconds; an operator may tune them).
RESTART_ENV = {
    "initial_delay": "ESTARTER_RESTART_INITIAL_DELAY",
    "max_delay": "ESTARTER_RESTART_MAX_DELAY",
    "stable_after": "ESTARTER_RESTART_STABLE_AFTER",
    "max_restarts": "ESTARTER_RESTART_MAX_RESTARTS",
    "window": "ESTARTER_RESTART_WINDOW",
}


@dataclass(frozen=True)
class RestartRules:
    """Exponential backoff with an OTP-style intensity limit."""

    initial_delay: float = 1.0
    max_delay: float = 30.0
    stable_after: float = 30.0  # a run this long resets the backoff
    max_restarts: int = 5  # more than this many restarts ...
    window: float = 60.0  # ... within this many seconds: failed

    def delay(self, consecutive: int) -> float:
        return float(min(self.max_delay, self.initial_delay * (2 ** max(0, consecutive - 1))))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RestartRules:
        """The defaults, overridden by ``ESTARTER_RESTART_*``; raises ValueError
        naming the variable when one is not a number >= 0."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name, var in RESTART_ENV.items():
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            try:
                value = int(raw) if name == "max_restarts" else float(raw)
            except ValueError:
                raise ValueError(f"{var}={raw!r} is not a number") from None
            if value < 0:
                raise ValueError(f"{var}={raw!r} must be >= 0")
            values[name] = value
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Cancellable(Protocol):
    def cancel(self) -> None: ...


def start_timer(delay: float, action: Callable[[], None]) -> Cancellable:
    """Run ``action`` on its own daemon thread after ``delay`` seconds."""
    timer = threading.Timer(delay, action)
    timer.daemon = True
    timer.start()
    return timer


# One line of an app's log file: time, level, stream (applog.STREAMS), message.
# ``logs.py`` parses it back; lines of older files have no stream.
LOG_FORMAT = "%(asctime)s %(levelname)s %(stream)s %(message)s"


class _AppLog:
    """The app's log: a size-capped rotating file, plus a bounded buffer to the kernel."""

    def __init__(self, path: Path, app_id: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=LOG_FILE_BYTES, backupCount=LOG_FILE_BACKUPS, encoding="utf-8")
        self._handler.setFormatter(logging.Formatter(LOG_FORMAT))
        self._logger = logging.Logger(f"estarter.app.{app_id}")
        self._logger.addHandler(self._handler)
        self._pending: collections.deque[tuple[str, str, str]] = collections.deque(
            maxlen=LOG_BUFFER_LINES)
        self._lock = threading.Lock()
        self.written = threading.Event()  # set by every write: the flusher's wake-up

    def write(self, level: str, message: str, stream: str = "estarter") -> None:
        """One line in the file and the kernel's buffer, whatever ``message`` holds:
        the level is one of four, the text cut and escaped (``applog.one_line``);
        ``stream`` says where it came from (the runtime's own lines by default)."""
        level, message = level_of(level), one_line(message)
        stream = stream if stream in STREAMS else "app"
        self._logger.log(_LEVELS[level], message, extra={"stream": stream})
        with self._lock:
            self._pending.append((level, message, stream))
        self.written.set()

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def take(self) -> list[tuple[str, str, str]]:
        with self._lock:
            lines = list(self._pending)
            self._pending.clear()
        return lines

    def close(self) -> None:
        self._handler.close()


class Supervisor:
    def __init__(
        self,
        policy: SandboxPolicy,
        run_id: int,
        kernel: KernelPort,
        home: Path,
        *,
        node: str = "local",
        host_factory: Callable[[SandboxPolicy, HostContext], AppHost] = create_host,
        rules: RestartRules | None = None,
        clock: Callable[[], float] = time.monotonic,
        schedule: Callable[[float, Callable[[], None]], Cancellable] | None = None,
        flush_interval: float = 0.05,
        blocked_addresses: tuple[str, ...] = (),
        zone_view: ZoneView = LOCAL_ZONES,
    ) -> None:
        self.policy = policy
        self.zone_view = zone_view  # whether this node mounts the zones (storage.py)
        self.app_id = policy.app_id
        self.run_id = run_id
        self.kernel = kernel
        # The port's encoded form of a call (``_api_encoded``), if it has one.
        self._call_encoded = getattr(kernel, "call_encoded", None)
        self.home = Path(home)
        self.node = node
        self.blocked_addresses = blocked_addresses  # e.g. the other Ray nodes' (network.py)
        self.rules = rules or RestartRules()
        self._factory = host_factory
        self._clock = clock
        self._schedule = schedule or start_timer
        self._lock = threading.RLock()
        self._host: AppHost | None = None
        self._host_started = 0.0
        self._restarts: collections.deque[float] = collections.deque()  # in the window
        self._total_restarts = 0
        self._consecutive = 0
        self._stopping = False
        self._final: dict[str, Any] | None = None
        self._final_event = threading.Event()
        self._restart_timer: Cancellable | None = None
        self._restart_at: float | None = None  # set while waiting out a backoff
        # healthCheck: when the current run's next heartbeat is due (clock time), the
        # timer that looks, and the host ended for missing one (its exit is reported
        # as unresponsive, not as the stop that ended it).
        self._beat_due: float | None = None
        self._beat_timer: Cancellable | None = None
        self._beat_check_at: float | None = None  # when that timer fires
        self._beat_generation = 0
        self._unresponsive: AppHost | None = None
        self._log = _AppLog(log_file(self.home, self.app_id), self.app_id)
        self._flush_interval = flush_interval
        self._waiting_calls = 0
        self.metrics = AppMetrics()
        self._flusher = threading.Thread(target=self._flush_loop, daemon=True,
                                         name=f"estarter-logs-{self.app_id}")
        self._closed = False

    # -- public ----------------------------------------------------------------

    def start(self) -> dict[str, Any]:
        """Start the app; raises LaunchError if its host cannot start."""
        if self._closed:
            raise RuntimeClosed(f"supervisor of {self.app_id} is closed")
        self._flusher.start()
        try:
            self._start_host()
        except BaseException:
            self._closed = True
            self._flush()
            self._log.close()
            raise
        return self.info(usage=False)

    def stop(self, grace: float = 5.0) -> dict[str, Any]:
        """Ask, wait ``grace``, kill, reap; no restart after. Returns the final exit."""
        with self._lock:
            self._stopping = True
            timer, self._restart_timer = self._restart_timer, None
            if timer is not None:
                timer.cancel()
            self._cancel_heartbeat_watch()
            host = self._host
            between = host is None or self._restart_at is not None
        if between:  # waiting out a backoff: nothing runs, so nothing reports an exit
            self._finalize(ExitInfo(None, ExitReason.STOPPED, "stopped between restarts"))
        else:
            # If a restart is starting a new host right now, this stops the old (ended)
            # one; _start_host sees _stopping once the new one runs and stops it.
            assert host is not None
            host.stop(grace)
        self._final_event.wait(15)
        return self._final or ExitInfo(None, ExitReason.STOPPED, "stop pending").to_dict()

    def wait(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The final exit (after every restart), or None after ``timeout``."""
        self._final_event.wait(timeout)
        return self._final

    def notify(self, method: str, params: Any) -> None:
        host = self._host
        if host is not None:
            host.notify(method, params)

    def heartbeat(self) -> dict[str, Any]:
        """``system.heartbeat``: the app is alive; its next one is due in
        ``heartbeatSeconds``. Answered here, never blocks; a no-op without a healthCheck."""
        every = self.policy.heartbeat_seconds
        with self._lock:
            if every > 0 and self._beat_due is not None and self._host is not None:
                self._beat_due = self._clock() + every
                if self._beat_check_at is not None and self._beat_due < self._beat_check_at:
                    # The first beat, while the timer waits out the start grace: look
                    # again when this one is due, not when the grace ends.
                    self._cancel_heartbeat_timer()
                    self._arm_heartbeat(self._host, every)
        return {"watched": every > 0, "heartbeatSeconds": every or None}

    def info(self, usage: bool = True) -> dict[str, Any]:
        """The app's state and counters; ``usage``: also sample its processes' CPU and
        memory (a walk of /proc, ~3 ms: not on the launch path)."""
        host = self._host
        base = host.info() if host is not None else {"appId": self.app_id, "state": "starting"}
        sampled = process_usage(host.pid if usage and host is not None
                                and self.policy.runtime.value != "wasm" else None)
        return {**base, "node": self.node, "runId": self.run_id,
                "zones": self.zone_view.to_dict(),
                "restarts": self._total_restarts, "restartAt": self._restart_at,
                "restartPolicy": self.policy.restart.value, "final": self._final,
                "usage": sampled, "metrics": self.metrics.snapshot()}

    def log_tail(self, lines: int = 100) -> dict[str, Any]:
        """The last ``lines`` lines of the app's log file, read on this node (where
        the file is written): what ``estarter logs`` shows of an app on another node."""
        tail = tail_file(log_file(self.home, self.app_id), lines)
        return {"node": self.node, "lines": tail}

    def close(self) -> None:
        """Stop the app if it runs and release everything. Idempotent."""
        if self._closed:
            return
        if self._final is None:
            self.stop(grace=0)
        self._closed = True
        host = self._host
        if host is not None:
            host.close()
        self._flush()
        self._log.close()

    # -- steps -----------------------------------------------------------------

    def _start_host(self) -> None:
        direct = self.zone_view.direct
        zones = app_zones(self.home, self.app_id) if direct else {}
        for path in zones.values():
            path.mkdir(parents=True, exist_ok=True)
        # Without one view of the files here, the working folder is a node-local one,
        # named so: never this node's copy of the zone (storage.py).
        appdata = zones["appdata"] if direct else node_local_dir(self.home, self.app_id)
        marked: list[int | None] = []

        def mark_start(pid: int | None) -> None:
            # The run's start marker: what a reader of the log needs to tell runs
            # apart. Written as the app starts, ahead of anything it prints (a
            # host reads its output on threads of its own).
            again = f", restart {self._total_restarts}" if self._total_restarts else ""
            self._log.write("info", f"app started: run {self.run_id}{again}, version "
                                    f"{self.policy.version}, pid {pid}, node {self.node}")
            marked.append(pid)

        ctx = HostContext(api=self._api, api_encoded=self._api_encoded,
                          log=self._log.write, on_exit=self._on_exit,
                          home=self.home, appdata=appdata, zones=zones,
                          blocked_addresses=self.blocked_addresses,
                          tagged_log=self._log.write, direct_zones=direct,
                          on_connect=getattr(self.kernel, "warm", None),
                          on_spawned=mark_start)
        host = self._factory(self.policy, ctx)
        with self._lock:
            self._host = host
            self._host_started = self._clock()
            self._restart_at = None
        host.start()
        if self._stopping:  # stop() arrived while this (re)start was under way
            host.stop(0)
            return
        if host.state is HostState.RUNNING:
            if not marked:  # a host that does not call on_spawned (a test's fake)
                mark_start(host.pid)
            self.kernel.running(self.app_id, self.run_id,
                                {"pid": host.pid, "node": self.node})
            # The start line goes now, while the app's interpreter starts: else the
            # app's first call sends it first, and waits for the kernel to take it.
            self._flush()
            self._watch_heartbeat(host)

    # -- the healthCheck watchdog ----------------------------------------------

    def _watch_heartbeat(self, host: AppHost) -> None:
        """Arm the watchdog for this run: the first heartbeat is due ``startGraceSeconds
        + heartbeatSeconds`` after the start, each next one ``heartbeatSeconds`` after
        the last. One timer per run, re-armed for what is left when it fires early."""
        every = self.policy.heartbeat_seconds
        if every <= 0:
            return
        with self._lock:
            if self._stopping or self._host is not host:
                return
            self._cancel_heartbeat_watch()
            self._beat_due = self._clock() + self.policy.heartbeat_grace_seconds + every
            self._arm_heartbeat(host, self._beat_due - self._clock())

    def _arm_heartbeat(self, host: AppHost, delay: float) -> None:
        delay = max(0.0, delay)
        self._beat_check_at = self._clock() + delay
        self._beat_generation += 1  # a timer cancelled too late finds itself stale
        generation = self._beat_generation
        self._beat_timer = self._schedule(delay,
                                          lambda: self._check_heartbeat(host, generation))

    def _cancel_heartbeat_timer(self) -> None:
        timer, self._beat_timer, self._beat_check_at = self._beat_timer, None, None
        if timer is not None:
            timer.cancel()

    def _cancel_heartbeat_watch(self) -> None:
        self._cancel_heartbeat_timer()
        self._beat_due = None

    def _check_heartbeat(self, host: AppHost, generation: int) -> None:
        """The watchdog's step: nothing (another run, stopping, ended), re-arm (a
        heartbeat came in time), or end the app, whose exit then reads unresponsive."""
        with self._lock:
            due = self._beat_due
            if (due is None or generation != self._beat_generation
                    or host is not self._host or self._stopping
                    or self._final is not None or host.state is not HostState.RUNNING):
                return
            now = self._clock()
            if now < due:
                self._arm_heartbeat(host, due - now)
                return
            self._beat_timer, self._beat_due, self._beat_check_at = None, None, None
            self._unresponsive = host
        self._log.write("error", f"no system.heartbeat within "
                                 f"{self.policy.heartbeat_seconds:g} s: ending the app")
        try:
            host.stop(0)  # an app that does not answer would not answer app.shutdown
        except EstarterError as exc:
            self._log.write("error", f"could not end the unresponsive app: {exc}")

    def _on_exit(self, info: ExitInfo) -> None:
        """Runs on the host's thread when the app ends: one supervision step."""
        with self._lock:
            ended_by_watchdog = self._unresponsive is not None \
                and self._unresponsive is self._host
            self._unresponsive = None
            if self._host is not None and self._beat_due is not None:
                self._cancel_heartbeat_watch()
        if ended_by_watchdog and info.reason is ExitReason.STOPPED:
            info = ExitInfo(info.code, ExitReason.UNRESPONSIVE,
                            f"no system.heartbeat within {self.policy.heartbeat_seconds:g} s")
        self.metrics.exited(info.reason.value)
        level = "info" if info.reason in (ExitReason.EXITED, ExitReason.STOPPED) else "error"
        self._log.write(level, f"app ended: {info.reason.value} (code {info.code}), run "
                               f"{self.run_id}{': ' + info.detail if info.detail else ''}")
        decision = self._decide(info)
        if decision is None:
            self._finalize(info)
            return
        delay, failed = decision
        if failed:
            self._finalize(info, failed=True)
            return
        self._log.write("info", f"restarting in {delay:.1f} s")
        with self._lock:
            if self._stopping:
                return
            self._restart_at = time.time() + delay
            self._restart_timer = self._schedule(delay, self._restart)

    def _decide(self, info: ExitInfo) -> tuple[float, bool] | None:
        """None: the end. Else (delay, gave_up)."""
        with self._lock:
            if self._stopping or info.reason is ExitReason.STOPPED:
                return None
            rule = self.policy.restart
            if rule is RestartPolicy.NEVER or (rule is RestartPolicy.ON_FAILURE
                                               and not info.failed):
                return None
            now = self._clock()
            if now - self._host_started >= self.rules.stable_after:
                self._consecutive = 0
            while self._restarts and now - self._restarts[0] > self.rules.window:
                self._restarts.popleft()
            if len(self._restarts) >= self.rules.max_restarts:
                self._log.write("error", f"more than {self.rules.max_restarts} restarts in "
                                         f"{self.rules.window:.0f} s: giving up")
                return (0.0, True)
            self._restarts.append(now)
            self._total_restarts += 1
            self._consecutive += 1
            return (self.rules.delay(self._consecutive), False)

    def _restart(self) -> None:
        with self._lock:
            if self._stopping or self._final is not None:
                return
        old = self._host
        if old is not None:
            old.close()
        try:
            self._start_host()
        except EstarterError as exc:
            self._log.write("error", f"restart failed: {exc}")
            self._on_exit(ExitInfo(None, ExitReason.CRASHED, f"restart failed: {exc}"))

    def _finalize(self, info: ExitInfo, failed: bool = False) -> None:
        with self._lock:
            if self._final is not None:
                return
            self._final = {**info.to_dict(), "failed": failed,
                           "restarts": self._total_restarts,
                           "metrics": self.metrics.snapshot()}
            self._restart_at = None
            self._cancel_heartbeat_watch()
        self._flush()
        try:
            self.kernel.exited(self.app_id, self.run_id, self._final)
        finally:
            self._final_event.set()

    # -- plumbing --------------------------------------------------------------

    def _api(self, method: str, params: Any) -> concurrent.futures.Future[Any]:
        """One API call of the app, counted (method, outcome, latency) when it ends."""
        began = time.perf_counter()
        fut = self._forward(method, params)
        if fut.done():  # quick calls are answered on this thread
            self._count(method, began, fut)
        else:
            fut.add_done_callback(lambda f: self._count(method, began, f))
        return fut

    def _api_encoded(self, method: str, params: Any) -> bytes | None:
        """``_api`` for a call the kernel answers at once, its reply left as the
        kernel encoded it (the host splices it into the app's answer: two JSON
        passes fewer on every call, issue 15). None: the call takes ``_api`` (it is
        answered here, or may wait, or the kernel port has no encoded form)."""
        call_encoded = self._call_encoded
        if (call_encoded is None or method in SUPERVISOR_METHODS or method == "log"
                or method in BLOCKING_METHODS):
            return None
        began = time.perf_counter()
        if self._log.pending:  # as in _forward: the app's lines before its call
            self._flush()
        reply: bytes | None = call_encoded(self.app_id, method, params)
        if reply is not None:
            self.metrics.call_done(method, outcome_of(reply_error(reply)),
                                   time.perf_counter() - began)
        return reply

    def _count(self, method: str, began: float, fut: concurrent.futures.Future[Any]) -> None:
        self.metrics.call_done(method, outcome_of(fut.exception()),
                               time.perf_counter() - began)

    def _forward(self, method: str, params: Any) -> concurrent.futures.Future[Any]:
        if method in SUPERVISOR_METHODS:  # system.heartbeat: this supervisor watches it
            beat: concurrent.futures.Future[Any] = concurrent.futures.Future()
            beat.set_result(self.heartbeat())
            return beat
        if method == "log" and isinstance(params, dict):
            # Served here: a log line needs no kernel round trip of its own.
            fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
            self._log.write(level_of(params.get("level")), one_line(params.get("message", "")),
                            "app")
            fut.set_result(None)
            return fut
        if self._log.pending:
            # Send what the app logged before this call first, so a reader of the
            # event stream sees the app's lines and its calls in the order they happened.
            self._flush()
        if method not in BLOCKING_METHODS:
            return self.kernel.call(self.app_id, method, params)
        # Calls that may wait hold a kernel thread each: one app must not be able to
        # take them all (and starve every other app and the operator).
        with self._lock:
            if self._waiting_calls >= MAX_WAITING_CALLS:
                busy: concurrent.futures.Future[Any] = concurrent.futures.Future()
                busy.set_exception(Busy(
                    f"more than {MAX_WAITING_CALLS} waiting calls at once", {"method": method}))
                return busy
            self._waiting_calls += 1
        fut = self.kernel.call(self.app_id, method, params)
        fut.add_done_callback(self._waiting_call_done)
        return fut

    def _waiting_call_done(self, _: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._waiting_calls -= 1

    def _flush(self) -> None:
        lines = self._log.take()
        if lines:
            try:
                self.kernel.logs(self.app_id, lines)
            except Exception:  # the kernel being away must not take the app down
                pass

    def _flush_loop(self) -> None:
        # Asleep until the app writes a line, then one call per interval's lines: the
        # supervisor of a quiet app does not wake 20 times a second (hundreds of them
        # on a node did, at ~1.4% of a core each). The final exit flushes by itself;
        # the long wait only bounds how late this thread notices the end.
        while not self._closed and not self._final_event.is_set():
            if not self._log.written.wait(FLUSHER_IDLE_SECONDS):
                continue
            self._final_event.wait(self._flush_interval)
            self._log.written.clear()  # before take: a line written after it wakes us again
            self._flush()
