"""The operator's client of the kernel socket: ``ps start stop restart inspect``
without a Ray driver.

``estarter up`` leaves the kernel listening on ``$ESTARTER_HOME/run/kernel.sock``
(inside the kernel actor, on the head node) and the operator token in
``run/operator-token`` (0600). ``reach(home)`` connects, says ``auth.hello`` with
that token and checks that the kernel serves this very home; it returns None
whenever the socket cannot be used (no runtime recorded, no socket, no token, no
answer, another home), and the caller falls back to ``Runtime.connect``. A call
answers in a few milliseconds where a Ray driver takes 1-2 s to start.

Standard library plus ``estarter.protocol`` framing and ``estarter.errors``:
importing this module never imports Ray.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from .errors import EstarterError, PermissionDenied, Unavailable
from .paths import run_dir
from .protocol.framing import FrameDecoder, FramingError, encode_frame

OPERATOR_TOKEN_FILE = "operator-token"  # the same file as the console's (console/auth.py)
SOCKET_NAME = "kernel.sock"
RUNTIME_FILE = "runtime.json"  # written by ``up`` (daemon.py)
# Connect and hello; on a loaded machine the kernel may take a moment, and a Ray
# driver (the fallback) would take longer than this anyway.
CONNECT_SECONDS = 5.0
QUICK_SECONDS = 30.0  # ps, info
# A stop waits for the app's grace, then for its kill and reap, its supervisor's
# report and the kernel's clean-up (each bounded on the kernel's side): beyond the
# grace, allow for all of them rather than answer "unavailable" for a stop that worked.
STOP_SECONDS = 120.0
START_SECONDS = 600.0  # a start may install an app's Python dependencies first
MAX_ANSWER_BYTES = 64 * 1024 * 1024


def token_file(home: Path) -> Path:
    return run_dir(home) / OPERATOR_TOKEN_FILE


def read_operator_token(home: Path) -> str | None:
    try:
        return token_file(home).read_text().strip() or None
    except OSError:
        return None


class OperatorClient:
    """One operator connection. Not thread-safe (a CLI command is one thread);
    ``close`` is idempotent; a context manager."""

    def __init__(self, sock: socket.socket, home: Path) -> None:
        self.home = home
        self._sock = sock
        self._decoder = FrameDecoder(max_size=MAX_ANSWER_BYTES)
        self._pending: list[bytes] = []
        self._next_id = 0
        self._closed = False

    @classmethod
    def connect(cls, home: Path, token: str, timeout: float = CONNECT_SECONDS
                ) -> OperatorClient:
        """Connect and authenticate. Unavailable if nothing answers on the socket,
        PermissionDenied if the kernel refuses the token."""
        path = run_dir(home) / SOCKET_NAME
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except OSError as exc:
            sock.close()
            raise Unavailable(f"the kernel socket {path} does not answer: {exc}") from None
        client = cls(sock, home)
        try:
            hello = client.call("auth.hello", {"token": token}, timeout)
        except BaseException:
            client.close()
            raise
        if not isinstance(hello, dict) or not hello.get("operator"):
            client.close()
            raise PermissionDenied("the kernel did not open an operator connection")
        if hello.get("home") != str(home):
            client.close()
            raise Unavailable(f"the kernel socket of {home} is served for "
                              f"{hello.get('home')}")
        return client

    def call(self, method: str, params: Any = None, timeout: float = QUICK_SECONDS) -> Any:
        """One request, answered within ``timeout``: its result, or its error raised
        as the EstarterError subclass of its code. Unavailable if the connection
        fails (the call may or may not have been applied)."""
        if self._closed:
            raise Unavailable("the operator connection is closed")
        self._next_id += 1
        msg_id = self._next_id
        req: dict[str, Any] = {"jsonrpc": "2.0", "id": msg_id, "method": method}
        if params is not None:
            req["params"] = params
        try:
            self._sock.settimeout(timeout)
            self._sock.sendall(encode_frame(req))
            while True:
                msg = self._read()
                if msg.get("id") != msg_id or "method" in msg:
                    continue  # a notification, or the answer to nothing of ours
                if "error" in msg and isinstance(msg["error"], dict):
                    raise EstarterError.from_dict(msg["error"])
                return msg.get("result")
        except (OSError, FramingError, ValueError) as exc:
            self.close()
            raise Unavailable(f"the kernel socket failed during {method}: "
                              f"{exc or type(exc).__name__}") from None

    # -- the operator methods (see estarter/kernel/operator_access.py) ----------

    def ps(self) -> list[dict[str, Any]]:
        return list(self.call("operator.ps", {}))

    def info(self, app_id: str) -> dict[str, Any]:
        return dict(self.call("operator.info", {"appId": app_id}))

    def actors(self) -> list[dict[str, Any]]:
        """The runtime's actors with role, node and pid (``estarter doctor``)."""
        return list(self.call("operator.actors", {}, STOP_SECONDS))

    def logs(self, app_id: str, lines: int = 100) -> dict[str, Any]:
        """The tail of the app's log, read on its node by its supervisor while it runs."""
        return dict(self.call("operator.logs", {"appId": app_id, "lines": lines}))

    def start(self, ref: str, grants: list[str] | None = None, grant_all: bool = False,
              node: str | None = None) -> dict[str, Any]:
        """Launch an installed id, a folder or a package (a path is made absolute
        here: the kernel does not share the caller's working folder)."""
        if os.path.exists(ref):
            ref = str(Path(ref).resolve())
        params: dict[str, Any] = {"ref": ref, "grants": list(grants or []),
                                  "grantAll": grant_all}
        if node is not None:
            params["node"] = node
        return dict(self.call("operator.start", params, START_SECONDS))

    def stop(self, app_id: str, grace: float = 5.0) -> dict[str, Any]:
        return dict(self.call("operator.stop", {"appId": app_id, "grace": grace},
                              STOP_SECONDS + grace))

    def restart(self, app_id: str, grace: float = 5.0) -> dict[str, Any]:
        return dict(self.call("operator.restart", {"appId": app_id, "grace": grace},
                              START_SECONDS + grace))

    # ``estarter permissions``, through the kernel's authority
    def permissions(self, app_id: str) -> dict[str, Any]:
        """Requested, granted, decisions (permission -> decision) and pending requests."""
        return dict(self.call("operator.permissions", {"appId": app_id}))

    def grant(self, app_id: str, perms: list[str]) -> list[str]:
        return list(self.call("operator.grant", {"appId": app_id,
                                                 "permissions": list(perms)})["granted"])

    def revoke(self, app_id: str, perms: list[str]) -> list[str]:
        return list(self.call("operator.revoke", {"appId": app_id,
                                                  "permissions": list(perms)})["granted"])

    def deny(self, app_id: str, perms: list[str] | None = None) -> int:
        params: dict[str, Any] = {"appId": app_id,
                                  "permissions": None if perms is None else list(perms)}
        return int(self.call("operator.deny", params)["denied"])

    def audit(self, app_id: str, limit: int = 100) -> list[dict[str, Any]]:
        return list(self.call("operator.audit", {"appId": app_id, "limit": limit}))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()

    def __enter__(self) -> OperatorClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _read(self) -> dict[str, Any]:
        while not self._pending:
            data = self._sock.recv(65536)
            if not data:
                raise ConnectionError("the kernel closed the connection")
            self._pending.extend(self._decoder.feed(data))
        msg = json.loads(self._pending.pop(0))
        if not isinstance(msg, dict):
            raise ValueError("the kernel sent a message that is not an object")
        return msg


class OperatorApp:
    """An app launched through ``OperatorRuntime``: what ``AppHandle`` offers ``run``."""

    def __init__(self, client: OperatorClient, record: dict[str, Any]) -> None:
        self.client = client
        self.record = record
        self.app_id = str(record["appId"])

    def stop(self, grace: float = 5.0) -> dict[str, Any]:
        return self.client.stop(self.app_id, grace)


class OperatorRuntime:
    """What ``estarter run`` (and ``--watch``) use of ``Runtime``: ``launch``,
    ``event_cursor``, ``events`` and ``shutdown``, over the operator socket, so a run
    against ``up`` starts no Ray driver. ``events`` waits by polling the kernel, which
    answers at once (``operator.events``), every ``POLL_SECONDS``."""

    POLL_SECONDS = 0.1

    def __init__(self, client: OperatorClient) -> None:
        self.client = client

    def launch(self, ref: str, grants: list[str] | None = None, grant_all: bool = False,
               node: str | None = None) -> OperatorApp:
        return OperatorApp(self.client, self.client.start(ref, grants, grant_all, node))

    def event_cursor(self) -> int:
        return int(self.client.call("operator.cursor", {}))

    def events(self, since: int, timeout: float = 0.0,
               app_id: str | None = None) -> dict[str, Any]:
        """As ``Runtime.events``: the events after ``since``, waiting up to
        ``timeout`` seconds for one."""
        params: dict[str, Any] = {"since": since}
        if app_id is not None:
            params["appId"] = app_id
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            batch = dict(self.client.call("operator.events", params))
            left = deadline - time.monotonic()
            if batch.get("events") or left <= 0:
                return batch
            time.sleep(min(self.POLL_SECONDS, left))

    def shutdown(self) -> None:
        self.client.close()


def reach(home: Path, timeout: float = CONNECT_SECONDS) -> OperatorClient | None:
    """An operator connection to the runtime ``up`` started for ``home``, or None
    when the socket cannot serve (then use ``Runtime.connect``): no runtime recorded,
    no token, nothing answering, a refused token or another home's kernel."""
    if not (run_dir(home) / RUNTIME_FILE).exists():
        return None
    token = read_operator_token(home)
    if token is None:
        return None
    try:
        return OperatorClient.connect(home, token, timeout)
    except EstarterError:
        return None


__all__ = ["OperatorApp", "OperatorClient", "OperatorRuntime", "reach",
           "read_operator_token", "token_file"]
