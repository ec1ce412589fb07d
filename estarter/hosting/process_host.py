"""ProcessHost: one app as a child process speaking JSON-RPC 2.0 over stdin/stdout.

Threads, each with one job, so nothing the app does can block the owner:
- ``owner``: spawns the child (so PDEATHSIG is tied to a thread that lives exactly
  as long as the child), waits for it, and is the only caller of ``wait``;
- ``reader``: stdout -> frames -> endpoint (requests go to ``ctx.api``); bytes
  between frames that do not begin a frame header are app text, logged as
  ``stdout`` (``StdoutSplitter``);
- ``stderr``: stderr lines -> the log as ``stderr``, rate limited, dropped lines
  counted; stdout text and ``log`` notifications share that budget
  (``applog.BoundedLog``: every field capped, one message one line), so no path
  grows with what the app sends;
- ``writer``: a bounded queue -> stdin, so an app that never reads its stdin
  stalls only this thread.
"""

from __future__ import annotations

import json
import os
import queue
import select
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import EstarterError, InternalError, LaunchError, NotFound, RuntimeClosed
from ..kinds import RuntimeKind
from ..policy import SandboxPolicy
from ..protocol.endpoint import Endpoint
from ..protocol.framing import FramingError, StdoutSplitter, encode_frame, frame_body
from ..protocol.kernel_wire import answer_body, encode_error
from ..protocol.messages import plain_request
from . import dotnet_app, limits, python_app
from .applog import LOG_LINE_MAX, BoundedLog, line_rate, tagged
from .base import ExitInfo, ExitReason, HostContext, HostState
from .budget import release_big_allocations
from .limits.rlimits import wait_with_usage
from .spawn import launcher_command

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_MALFORMED = 10
MAX_PENDING_OUT_BYTES = 32 * 1024 * 1024
DRAIN_SECONDS = 15.0  # the most an exit waits for the app's last output lines
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


def app_command(policy: SandboxPolicy) -> list[str]:
    """The argv that runs the app itself (before launcher and sandbox wrappers)."""
    if policy.runtime is RuntimeKind.PYTHON:
        return python_app.command(policy.entry, policy.app_dir, policy.args,
                                  policy.python_deps)
    if policy.runtime is RuntimeKind.NATIVE:
        return [str(policy.entry), *policy.args]
    if policy.runtime is RuntimeKind.DOTNET:
        return dotnet_app.command(policy.entry, policy.args)  # NotSupported: no host
    raise LaunchError(f"ProcessHost cannot run runtime {policy.runtime.value!r}")


def child_env(policy: SandboxPolicy, ctx: HostContext) -> dict[str, str]:
    """The app's whole environment: the operator's configuration (names the manifest
    validated, never estarter's own), then what estarter sets. Nothing of the host's."""
    env = dict(policy.app_env)
    env |= {
        "PATH": SAFE_PATH,
        "LANG": "C.UTF-8",
        "ESTARTER_MODE": "hosted",
        "ESTARTER_APP_ID": policy.app_id,
    }
    env.update({k: v for k, v in ctx.env.items() if k.startswith("ESTARTER_")})
    env.update(dict(policy.extra_env))
    return env


def _chunks(fd: int) -> Iterator[bytes]:
    """What the app writes to a pipe, as it comes, until end of file or an error."""
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            return
        if not data:
            return
        yield data


class ProcessHost:
    """Hosts one native or python app. See the module docstring for the threads."""

    def __init__(
        self,
        policy: SandboxPolicy,
        ctx: HostContext,
        *,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        max_pending_out_bytes: int = MAX_PENDING_OUT_BYTES,
    ) -> None:
        self.app_id = policy.app_id
        self.policy = policy
        self.ctx = ctx
        self._max_message = max_message_bytes
        self._max_out = max_pending_out_bytes
        self._lock = threading.Lock()
        self._state = HostState.STARTING
        self._proc: subprocess.Popen[bytes] | None = None
        self._limits = limits.prepare(policy, ctx)
        self._plan: limits.LaunchPlan | None = None
        self._spawned = threading.Event()
        self._spawn_error: BaseException | None = None
        self._done = threading.Event()
        self._exit: ExitInfo | None = None
        self._end_cause: tuple[ExitReason, str] | None = None  # why *we* ended it
        self._out: queue.Queue[bytes | None] = queue.Queue()
        self._out_bytes = 0
        self._stdin_fd: int | None = None  # set while direct writes are possible
        self._dropped_notifications = 0
        self._app_log = BoundedLog(tagged(ctx),
                                   line_rate=line_rate(policy.log_lines_per_second))
        release_big_allocations()  # what a 16 MiB message took goes back after it
        self._started_at: float | None = None
        self._deadline_timer: threading.Timer | None = None
        self._closed = False
        self._drainers: list[threading.Thread] = []
        self.endpoint = Endpoint(self._dispatch, self._send)

    # -- AppHost ---------------------------------------------------------------

    @property
    def state(self) -> HostState:
        return self._state

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> None:
        if self._closed:
            raise RuntimeClosed(f"host of {self.app_id} is closed")
        if self._proc is not None or self._spawned.is_set():
            raise LaunchError(f"{self.app_id} was already started")
        self.ctx.appdata.mkdir(parents=True, exist_ok=True)
        plan = self._limits.plan(app_command(self.policy), child_env(self.policy, self.ctx),
                                 self.ctx.appdata)
        self._plan = plan
        for missing in plan.not_applied:
            self.ctx.log("warning", f"limit not applied: {missing}")
        owner = threading.Thread(target=self._own, name=f"estarter-owner-{self.app_id}",
                                 daemon=True)
        owner.start()
        if not self._spawned.wait(30):
            raise LaunchError(f"{self.app_id}: spawn did not complete within 30 s")
        if isinstance(self._spawn_error, EstarterError):
            raise self._spawn_error
        if self._spawn_error is not None:
            raise LaunchError(f"{self.app_id}: cannot start: {self._spawn_error}") from None

    def stop(self, grace: float = 5.0) -> ExitInfo:
        if self._exit is not None:
            return self._exit
        self._end(ExitReason.STOPPED, "stopped on request", kill=False)
        with self._lock:
            if self._state in (HostState.STARTING, HostState.RUNNING):
                self._state = HostState.STOPPING
        if self._proc is not None and grace > 0:
            try:
                self.endpoint.request("app.shutdown", {"graceSeconds": grace})
            except EstarterError:
                pass
            self._done.wait(grace)
        if not self._done.is_set():
            self._limits.kill()
            self._done.wait(10)
        info = self._exit
        return info if info is not None else ExitInfo(None, ExitReason.STOPPED, "not reaped")

    def wait(self, timeout: float | None = None) -> ExitInfo | None:
        self._done.wait(timeout)
        return self._exit

    def notify(self, method: str, params: Any) -> None:
        if self._exit is not None or self._closed:
            return
        if self._out_bytes > self._max_out // 2:
            self._dropped_notifications += 1  # the app is not reading: don't grow
            return
        try:
            self.endpoint.notify(method, params)
        except EstarterError:
            self._dropped_notifications += 1

    def info(self) -> dict[str, Any]:
        stats = self.endpoint.statistics()
        plan = self._plan
        return {
            "appId": self.app_id,
            "state": self._state.value,
            "pid": self.pid,
            "startedAt": self._started_at,
            "runtime": self.policy.runtime.value,
            "limits": {
                **self._limits.report(),
                "applied": list(plan.applied) if plan else [],
                "notApplied": list(plan.not_applied) if plan else [],
            },
            "messages": {
                "received": stats.received,
                "sent": stats.sent,
                "malformed": stats.malformed,
                "pendingOutBytes": self._out_bytes,
                "droppedNotifications": self._dropped_notifications,
                "droppedLogLines": self._app_log.dropped,
                "logLinesPerSecond": self._app_log.lines_per_second,
            },
            "exit": self._exit.to_dict() if self._exit else None,
        }

    def close(self) -> None:
        if self._closed:
            return
        if self._proc is not None and self._exit is None:
            self.stop(grace=0)
        self._closed = True
        self._limits.cleanup()

    def __enter__(self) -> ProcessHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- threads ---------------------------------------------------------------

    def _own(self) -> None:
        plan = self._plan
        assert plan is not None
        argv = launcher_command(plan.spec, [*plan.wrapper, *plan.argv])
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=plan.env, cwd=str(plan.cwd), close_fds=True, bufsize=0,
                pass_fds=plan.pass_fds,
            )
        except OSError as exc:
            self._spawn_error = exc
            self._state = HostState.FAILED
            self._spawned.set()
            return
        try:
            self._limits.started(proc.pid)  # sets up an outbound network before the app runs
        except EstarterError as exc:  # strict mode, and it could not: the child is killed
            with proc:  # closes its pipes, reaps it
                pass
            self._spawn_error = exc
            self._state = HostState.FAILED
            self._spawned.set()
            return
        self._proc = proc
        if self.ctx.on_spawned is not None:  # before the readers: its lines come after
            self.ctx.on_spawned(proc.pid)
        assert proc.stdin is not None
        os.set_blocking(proc.stdin.fileno(), False)
        self._stdin_fd = proc.stdin.fileno()
        self._started_at = time.time()
        self._state = HostState.RUNNING
        for target, name in ((self._read_stdout, "reader"), (self._read_stderr, "stderr"),
                             (self._write_stdin, "writer")):
            t = threading.Thread(target=target, name=f"estarter-{name}-{self.app_id}",
                                 daemon=True)
            t.start()
            if name != "writer":
                self._drainers.append(t)
        if self.policy.max_runtime_seconds > 0:
            self._deadline_timer = threading.Timer(
                self.policy.max_runtime_seconds,
                self._end, (ExitReason.TIMEOUT, "maxRuntimeSeconds reached"),
            )
            self._deadline_timer.daemon = True
            self._deadline_timer.start()
        self._spawned.set()
        # The one owner of wait(): nothing else reaps this child. wait4 rather than
        # proc.wait(): its rusage tells a CPU-limit kill from any other SIGKILL.
        code, cpu_seconds = wait_with_usage(proc.pid)
        proc.returncode = code
        self._finish(code, cpu_seconds)

    def _finish(self, code: int, cpu_seconds: float | None = None) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        self._limits.kill()  # whatever the app left behind goes with it
        # stdout and stderr readers reach EOF after the kill: the app's last lines are
        # logged before its exit is. The bound is for a pipe held by something the
        # kill missed; on a loaded host a reader can be seconds behind (2 s lost the
        # line an app's shutdown handler wrote last, under stress-ng).
        deadline = time.monotonic() + DRAIN_SECONDS
        for t in self._drainers:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        limit_reason = self._limits.exit_reason(code, cpu_seconds)
        if self._end_cause is not None:
            reason, detail = self._end_cause
        elif limit_reason is not None:
            reason, detail = limit_reason, f"{limit_reason.value} (exit code {code})"
        elif code == 0:
            reason, detail = ExitReason.EXITED, ""
        else:
            reason = ExitReason.CRASHED
            detail = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        if self._app_log.dropped:
            self.ctx.log("warning", f"{self._app_log.dropped} log lines dropped (flood)")
        self._exit = ExitInfo(code, reason, detail)
        self._state = HostState.EXITED
        self._out.put(None)
        self.endpoint.close(NotFound(f"app {self.app_id} has exited"))
        self._limits.cleanup()
        self._done.set()
        try:
            self.ctx.on_exit(self._exit)
        except Exception as exc:  # the callback's failure must not hide the exit
            self.ctx.log("error", f"exit callback failed: {exc!r}")

    def _end(self, reason: ExitReason, detail: str, kill: bool = True) -> None:
        """Record why we end the app (first cause wins) and, unless asked not to, kill it."""
        with self._lock:
            first = self._end_cause is None and self._exit is None
            if first:
                self._end_cause = (reason, detail)
        if first and reason is ExitReason.PROTOCOL_VIOLATION:  # once, not per message
            self.ctx.log("error", f"protocol violation: {detail}")
        if kill:
            self._limits.kill()

    def _read_stdout(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        splitter = StdoutSplitter(max_size=self._max_message, max_line=LOG_LINE_MAX)
        on_connect = self.ctx.on_connect
        direct = self.ctx.api_encoded
        for data in _chunks(proc.stdout.fileno()):
            if on_connect is not None:
                connecting, on_connect = on_connect, None
                connecting()
            if self._end_cause is not None and self._end_cause[0] is ExitReason.PROTOCOL_VIOLATION:
                continue  # drain until the kill lands
            bodies: list[bytes] = []
            text: list[bytes] = []
            try:
                splitter.feed(data, bodies, text)
            except FramingError as exc:
                bodies = []  # the app ends: log its text up to the bad frame, serve nothing
                self._end(ExitReason.PROTOCOL_VIOLATION, str(exc))
            for line in text:
                if line:  # the SDK writes one line break ahead of its first frame
                    self._app_log.line("info", line, "stdout")
            for body in bodies:
                if direct is None or not self._answer_directly(body, direct):
                    self.endpoint.receive(body)
                if self.endpoint.statistics().malformed > MAX_MALFORMED:
                    # Checked per message: a chunk may hold thousands of them.
                    self._end(ExitReason.PROTOCOL_VIOLATION,
                              f"more than {MAX_MALFORMED} malformed messages")
                    break
        for line in splitter.finish():
            self._app_log.line("info", line, "stdout")

    def _read_stderr(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stderr is not None
        pending = b""
        for data in _chunks(proc.stderr.fileno()):
            pending += data
            *lines, pending = pending.split(b"\n")
            if len(pending) > LOG_LINE_MAX:  # a line without end: cut it
                lines.append(pending[:LOG_LINE_MAX])
                pending = b""
            for line in lines:
                self._app_log.line("info", line.rstrip(b"\r"), "stderr")
        if pending:
            self._app_log.line("info", pending, "stderr")

    def _write_stdin(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdin is not None
        fd = proc.stdin.fileno()
        while True:
            chunk = self._out.get()
            if chunk is None:
                break
            try:
                view = memoryview(chunk)
                while view:
                    try:
                        n = os.write(fd, view)
                    except BlockingIOError:
                        select.select([], [fd], [], 1.0)  # the app is slow to read
                        continue
                    view = view[n:]
            except OSError:
                break  # the app closed its stdin or exited; the owner reports the exit
            finally:
                with self._lock:
                    self._out_bytes -= len(chunk)
        with self._lock:
            self._stdin_fd = None
        try:
            proc.stdin.close()
        except OSError:
            pass

    # -- endpoint plumbing -----------------------------------------------------

    def _answer_directly(self, body: bytes,
                         api_encoded: Callable[[str, Any], bytes | None]) -> bool:
        """Answer a plain request with the kernel's reply spliced into the answer
        frame as the kernel encoded it, without the endpoint (no decode of the
        reply, no encode of the answer: issue 15). False: the endpoint takes the
        body as before (a batch, a notification, an answer, anything invalid, a
        call served here or one that may wait)."""
        try:
            request = plain_request(json.loads(body))
        except (ValueError, RecursionError):
            return False
        if request is None or request[1] == "log":
            return False
        if self.endpoint.closed:
            return True  # the app is gone: dropped, as the endpoint drops it
        msg_id, method, params = request
        failure: Exception | None = None
        try:
            reply = api_encoded(method, params)
        except Exception as exc:  # a bug: the app gets -32603, as from the endpoint
            failure, reply = exc, encode_error(InternalError("Internal error"))
        if reply is None:
            return False
        self.endpoint.count_answered(failure)
        self._send_frame(frame_body(answer_body(msg_id, reply)))
        return True

    def _send(self, obj: Any) -> None:
        """Queue one message for the app (the endpoint's writer)."""
        self._send_frame(encode_frame(obj))

    def _send_frame(self, frame: bytes) -> None:
        """Fast path: with nothing queued, write it now (stdin is non-blocking);
        whatever does not fit goes to the writer."""
        with self._lock:
            if self._exit is not None:
                return
            if self._out_bytes == 0 and self._stdin_fd is not None:
                try:
                    n = os.write(self._stdin_fd, frame)
                except BlockingIOError:
                    n = 0
                except OSError:
                    return  # the app closed its stdin; the owner reports the exit
                if n == len(frame):
                    return
                frame = frame[n:]
            self._out_bytes += len(frame)
            over = self._out_bytes > self._max_out
            if not over:
                self._out.put(frame)
        if over:
            self._end(ExitReason.PROTOCOL_VIOLATION,
                      f"app does not read its stdin ({self._max_out} bytes pending)")

    def _dispatch(self, method: str, params: Any) -> Any:
        if method == "log":
            # Served here, under the stderr budget: a log line costs the kernel
            # nothing until it passes, and no field of it is bigger than a line.
            p = params if isinstance(params, dict) else {}
            # The SDK forwards a hosted app's stray print() output as stream "stdout".
            stream = "stdout" if p.get("stream") == "stdout" else "app"
            self._app_log.line(p.get("level", "info"), p.get("message", ""), stream)
            return None
        return self.ctx.api(method, params)
