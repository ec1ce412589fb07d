"""Sandboxed functions: a Python callable run in a child process under an app's limits.

``Runtime.submit(fn, *args, limits=...)`` pickles ``(fn, args, kwargs)`` with
cloudpickle; ``run_sandboxed`` (on whichever node runs it: a Ray task, or a thread
in local mode) starts a child through the same launcher, cgroups, rlimits and bwrap
sandbox as a native app (no network, no host files, uid 65534), feeds it the pickle
on stdin and reads one result envelope back. The child binds only the interpreter,
its site-packages (cloudpickle) and the ``sdk``: the function must not need
estarter itself.

The envelope comes back as plain data (an :class:`Outcome` dict) and is decoded by
the caller, never on the node that ran it. Its value is unpickled with an allowlist
of plain types, because the function is untrusted and a full unpickle would let it
run code in the caller's process. An exception raised by the function comes back as
text (type, message, traceback), never as a pickled object.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import os
import pickle
import secrets
import selectors
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .errors import ApiTimeout, EstarterError, InvalidParams, QuotaExceeded
from .hosting import limits
from .hosting.base import ExitReason, HostContext
from .hosting.spawn import launcher_command
from .manifest import DEFAULT_MAX_OPEN_FILES, RestartPolicy, RuntimeKind, parse_manifest
from .policy import SandboxPolicy

LIMIT_KEYS = ("memoryLimitMb", "cpuQuota", "maxRuntimeSeconds", "maxProcesses",
              "networkAllowed", "maxOpenFiles")
MAX_RESULT_BYTES = 64 * 1024 * 1024
STDERR_TAIL_BYTES = 16 * 1024

# The child: keep the real stdout for the envelope, send the function's prints to
# stderr, run, answer. Plain ``pickle`` for the envelope: the caller refuses
# anything beyond plain types anyway (see SafeUnpickler).
RUNNER = r"""
import os, pickle, sys, traceback
out = os.fdopen(os.dup(1), "wb")
os.dup2(2, 1)
payload = sys.stdin.buffer.read()
try:
    import cloudpickle
    fn, args, kwargs = cloudpickle.loads(payload)
    del payload
    env = ("ok", fn(*args, **kwargs))
except BaseException as exc:
    env = ("error", type(exc).__qualname__, str(exc)[:4096], traceback.format_exc()[-16384:])
try:
    blob = pickle.dumps(env, protocol=5)
except Exception as exc:
    blob = pickle.dumps(("error", "PicklingError", f"result cannot be pickled: {exc}", ""))
out.write(blob)
out.flush()
os._exit(0)
"""


class FunctionError(EstarterError):
    """The function raised. ``data`` = {type, traceback}: the remote exception as text."""

    @property
    def remote_type(self) -> str:
        return str((self.data or {}).get("type", ""))

    @property
    def remote_traceback(self) -> str:
        return str((self.data or {}).get("traceback", ""))


class FunctionLimitExceeded(QuotaExceeded):
    """The function went past a limit (``data.reason``: memory_limit or cpu_limit)."""


class FunctionCrashed(EstarterError):
    """The child ended without an answer (a signal, ``os._exit``, a sandbox failure)."""


# -- limits ----------------------------------------------------------------------


def check_limits(raw: Mapping[str, Any] | None) -> dict[str, Any]:
    """Manifest-style limits, validated with the manifest's own ranges; InvalidParams
    (naming the key) for a key that is not a limit, ManifestError for a bad value."""
    given = dict(raw or {})
    for key in given:
        if key not in LIMIT_KEYS:
            raise InvalidParams(f"limits: {key}: not a function limit (one of "
                                f"{', '.join(LIMIT_KEYS)})", {"key": key})
    parse_manifest(json.dumps({"id": "function", "entry": "f.py", **given}), "limits")
    return given


def function_policy(raw: Mapping[str, Any] | None, folder: Path) -> SandboxPolicy:
    """The policy a function runs under: an app with no permissions and these limits."""
    given = check_limits(raw)
    return SandboxPolicy(
        app_id=f"fn-{secrets.token_hex(4)}",
        runtime=RuntimeKind.PYTHON,
        app_dir=folder,
        entry=folder / "function.py",
        args=(),
        requested=frozenset(),
        granted=frozenset(),
        memory_limit_bytes=int(given.get("memoryLimitMb", 0)) * 1024 * 1024,
        max_processes=int(given.get("maxProcesses", 0)),
        max_open_files=int(given.get("maxOpenFiles", DEFAULT_MAX_OPEN_FILES)),
        cpu_quota_percent=int(given.get("cpuQuota", 0)),
        network_allowed=bool(given.get("networkAllowed", False)),
        max_runtime_seconds=float(given.get("maxRuntimeSeconds", 0)),
        disk_quota_bytes=0,
        restart=RestartPolicy.NEVER,
        sandboxed=True,
    )


# -- caller side -----------------------------------------------------------------

_by_value_lock = threading.Lock()


def encode_call(fn: Callable[..., Any], args: tuple[Any, ...],
                kwargs: Mapping[str, Any]) -> bytes:
    """cloudpickle of (fn, args, kwargs). A function from a module outside the
    interpreter's own install (a test file, a script) is pickled by value: the
    sandbox cannot import it."""
    import cloudpickle

    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    by_value = module is not None and module.__name__ != "__main__" and _is_local(module)
    with _by_value_lock:  # registration is cloudpickle-global state
        if by_value:
            cloudpickle.register_pickle_by_value(module)
        try:
            return bytes(cloudpickle.dumps((fn, tuple(args), dict(kwargs)), protocol=5))
        finally:
            if by_value:
                cloudpickle.unregister_pickle_by_value(module)


def _is_local(module: Any) -> bool:
    path = getattr(module, "__file__", None)
    if not path:
        return False
    real = os.path.realpath(path)
    installs = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix)}
    return not any(real.startswith(p + os.sep) for p in installs)


class SafeUnpickler(pickle.Unpickler):
    """Unpickles plain data only: builtin scalars and containers plus a few value types."""

    ALLOWED = frozenset({
        ("builtins", "complex"), ("builtins", "set"), ("builtins", "frozenset"),
        ("builtins", "bytearray"), ("builtins", "range"), ("builtins", "slice"),
        ("collections", "OrderedDict"), ("collections", "deque"),
        ("datetime", "date"), ("datetime", "datetime"), ("datetime", "time"),
        ("datetime", "timedelta"), ("datetime", "timezone"),
        ("decimal", "Decimal"), ("fractions", "Fraction"),
    })

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not a plain value type")
        return super().find_class(module, name)


def decode(outcome: Mapping[str, Any]) -> Any:
    """The function's value, or the typed error its run ended with."""
    status = outcome.get("status")
    detail = str(outcome.get("detail", ""))
    if status == "ok":
        try:
            env = SafeUnpickler(io.BytesIO(outcome["result"])).load()
        except Exception as exc:
            raise FunctionError(f"the function's result was refused: {exc}",
                                {"type": "UnpicklingError", "traceback": ""}) from None
        if env[0] == "ok":
            return env[1]
        _, kind, message, tb = env
        if kind == "MemoryError":
            raise FunctionLimitExceeded(f"memory_limit: MemoryError {message}".strip(),
                                        {"reason": "memory_limit", "traceback": tb})
        raise FunctionError(f"{kind}: {message}", {"type": kind, "traceback": tb})
    if status == "limit":
        reason = str(outcome.get("reason", "memory_limit"))
        raise FunctionLimitExceeded(f"{reason}: {detail}", {"reason": reason})
    if status == "timeout":
        raise ApiTimeout(f"the function ran past maxRuntimeSeconds: {detail}")
    raise FunctionCrashed(f"the function's process ended without an answer: {detail}",
                          {"stderr": outcome.get("stderr", "")})


class FunctionFuture:
    """The pending result of one submitted function."""

    def __init__(self, inner: concurrent.futures.Future[Any]) -> None:
        self._inner = inner

    def done(self) -> bool:
        return self._inner.done()

    def result(self, timeout: float | None = None) -> Any:
        """The value, or the typed error (ApiTimeout also when ``timeout`` passes)."""
        try:
            outcome = self._inner.result(timeout)
        except concurrent.futures.TimeoutError:
            raise ApiTimeout(f"no result within {timeout} s") from None
        return decode(outcome)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        try:
            self.result(timeout)
        except ApiTimeout as exc:
            if not self._inner.done():
                raise
            return exc
        except Exception as exc:
            return exc
        return None


# -- node side -------------------------------------------------------------------


def run_sandboxed(payload: bytes, raw_limits: Mapping[str, Any] | None,
                  workdir: Path | None = None) -> dict[str, Any]:
    """Run one encoded call in a sandboxed child and wait for it. Never raises for
    what the function does: the :class:`Outcome` says (ok, limit, timeout, crashed).
    Must run on a thread that lives until it returns (the child's PDEATHSIG)."""
    folder = workdir or _empty_folder()
    policy = function_policy(raw_limits, folder)
    ctx = HostContext(api=_no_api, log=lambda level, msg: None, on_exit=lambda i: None,
                      home=folder, appdata=folder, zones={})
    lim = limits.prepare(policy, ctx)
    try:
        plan = lim.plan([sys.executable, "-E", "-s", "-B", "-c", RUNNER],
                        {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, folder)
        wrapper = _with_environment(plan.wrapper)
        argv = launcher_command(plan.spec, [*wrapper, *plan.argv])
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env=plan.env, cwd=str(folder),
                                    close_fds=True, pass_fds=plan.pass_fds)
        except OSError as exc:
            return {"status": "crashed", "detail": f"cannot start: {exc}"}
        lim.started(proc.pid)
        deadline = (time.monotonic() + policy.max_runtime_seconds
                    if policy.max_runtime_seconds > 0 else None)
        out, err, timed_out = _exchange(proc, payload, deadline, lim.kill)
        code = proc.wait()
        lim.kill()  # whatever the function left behind goes with it
        reason = lim.exit_reason(code)
    finally:
        lim.cleanup()
    tail = err[-STDERR_TAIL_BYTES:].decode("utf-8", "replace")
    if timed_out:
        return {"status": "timeout", "detail": f"{policy.max_runtime_seconds:g} s"}
    if reason in (ExitReason.MEMORY_LIMIT, ExitReason.CPU_LIMIT):
        assert reason is not None
        return {"status": "limit", "reason": reason.value, "detail": _code_text(code)}
    if code == 0 and out:
        return {"status": "ok", "result": out}
    return {"status": "crashed", "detail": _code_text(code), "stderr": tail}


def _exchange(proc: subprocess.Popen[bytes], payload: bytes, deadline: float | None,
              kill: Callable[[], None]) -> tuple[bytes, bytes, bool]:
    """Write the payload, read stdout (capped) and the tail of stderr until both end."""
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    writer = threading.Thread(target=_feed, args=(proc.stdin, payload), daemon=True)
    writer.start()
    out, err = bytearray(), bytearray()
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, out)
    sel.register(proc.stderr, selectors.EVENT_READ, err)
    timed_out = False
    while sel.get_map():
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0 and not timed_out:
            timed_out = True
            kill()
            deadline = None  # after the kill, read to EOF
            continue
        for key, _ in sel.select(left):
            chunk = os.read(key.fd, 65536)
            if not chunk:
                sel.unregister(key.fileobj)
                continue
            buf: bytearray = key.data
            buf += chunk
            if buf is err and len(err) > 2 * STDERR_TAIL_BYTES:
                del err[:-STDERR_TAIL_BYTES]
            elif buf is out and len(out) > MAX_RESULT_BYTES:
                kill()
                out.clear()
    sel.close()
    writer.join(timeout=5)
    return bytes(out), bytes(err), timed_out


def _feed(pipe: Any, payload: bytes) -> None:
    try:
        pipe.write(payload)
    except OSError:
        pass  # the child died early: its exit says why
    finally:
        try:
            pipe.close()
        except OSError:
            pass


def _with_environment(wrapper: list[str]) -> list[str]:
    """Bind the caller's Python environment (its venv, read-only) into the sandbox.

    A function is the caller's own code: it imports what the caller imports
    (cloudpickle, numpy, ...). Apps never get this: they see the standard library,
    the SDK and their own folder only (``hosting/python_app.py``)."""
    prefix = Path(sys.prefix).resolve()
    if not wrapper or prefix == Path("/usr") or Path("/usr") in prefix.parents:
        return wrapper
    # Mounts go before the root is made read-only (their mount points are made there).
    at = wrapper.index("--remount-ro") if "--remount-ro" in wrapper else len(wrapper) - 1
    return [*wrapper[:at], "--ro-bind", str(prefix), str(prefix), *wrapper[at:]]


def _code_text(code: int | None) -> str:
    if code is None:
        return "no exit code"
    return f"killed by signal {-code}" if code < 0 else f"exit code {code}"


def _empty_folder() -> Path:
    """A folder the sandbox binds read-only as the function's (empty) app folder."""
    folder = Path(tempfile.gettempdir()) / "estarter-functions"
    folder.mkdir(mode=0o755, exist_ok=True)
    return folder


def _no_api(method: str, params: Any) -> concurrent.futures.Future[Any]:
    raise EstarterError("a sandboxed function has no kernel API")


# -- local mode ------------------------------------------------------------------

_local_lock = threading.Lock()
_local_pool: concurrent.futures.ThreadPoolExecutor | None = None


def local_workers() -> int:
    """Children started at once in local mode: a child mostly waits on its own start."""
    return max(2, 2 * (os.cpu_count() or 1))


def submit_local(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any],
                 raw_limits: Mapping[str, Any] | None) -> FunctionFuture:
    """Local mode: run on a shared thread pool of this process, no Ray."""
    global _local_pool
    check_limits(raw_limits)
    payload = encode_call(fn, args, kwargs)
    with _local_lock:
        if _local_pool is None:
            _local_pool = concurrent.futures.ThreadPoolExecutor(
                local_workers(), thread_name_prefix="estarter-function")
        pool = _local_pool
    return FunctionFuture(pool.submit(run_sandboxed, payload, dict(raw_limits or {})))


__all__ = ["FunctionCrashed", "FunctionError", "FunctionFuture", "FunctionLimitExceeded",
           "check_limits", "decode", "encode_call", "run_sandboxed", "submit_local"]
