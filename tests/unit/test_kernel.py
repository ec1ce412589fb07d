"""The kernel without Ray or hosted apps: permission lifecycle, the CLI, the socket."""

from __future__ import annotations

import json
import queue
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from estarter import cli_kernel
from estarter.errors import NotFound, PermissionDenied
from estarter.kernel.core import Kernel
from estarter.kernel.permissions import PermissionManager
from estarter.paths import state_db
from sdk import ApiError, EStarterClient, PermissionDeniedError
from sdk._wire import encode_frame
from sdk.transports import SocketTransport

APP = "tool"


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[Kernel]:
    home = tmp_path / "h"
    k = Kernel(home, PermissionManager(state_db(home)))
    k.permissions.register(APP, ["fs.read", "fs.write", "fs.delete", "ipc.receive",
                                 "ui.notification"])
    try:
        yield k
    finally:
        k.shutdown()
        k.permissions.close()


def cli(kernel: Kernel, *args: str) -> str:
    result = CliRunner().invoke(cli_kernel.app, [*args, "--home", str(kernel.home)])
    assert result.exit_code == 0, result.output
    return result.output


def test_cli_revocation_counts_on_the_next_call_and_is_audited(kernel: Kernel) -> None:
    assert "fs.write" not in kernel.permissions.granted(APP)  # requested is not granted
    cli(kernel, "permissions", "grant", APP, "fs.write")
    assert kernel.handle(APP, "fs.write", {"path": "/appdata/a", "text": "1"})["written"] == 1
    cli(kernel, "permissions", "revoke", APP, "fs.write")  # another connection
    with pytest.raises(PermissionDenied):
        kernel.handle(APP, "fs.write", {"path": "/appdata/a", "text": "2"})
    assert kernel.handle(APP, "fs.read", {"path": "/appdata/a"})["text"] == "1"  # no effect
    kernel.permissions.flush()  # what the kernel's watcher does every second
    rows = json.loads(cli(kernel, "permissions", "audit", APP, "--json"))
    decisions = [(r["permission"], r["decision"]) for r in rows if r["permission"] == "fs.write"]
    assert decisions == [("fs.write", "granted"), ("fs.write", "allowed"),
                         ("fs.write", "revoked"), ("fs.write", "denied")]
    listed = json.loads(cli(kernel, "permissions", "list", APP, "--json"))
    assert "fs.write" in listed["requested"] and "fs.write" not in listed["granted"]


def _request(kernel: Kernel, perm: str, timeout_ms: int) -> queue.Queue[Any]:
    out: queue.Queue[Any] = queue.Queue()
    threading.Thread(target=lambda: out.put(kernel.handle(
        APP, "permission.request", {"permission": perm, "reason": "why",
                                    "timeoutMs": timeout_ms})), daemon=True).start()
    return out


def _wait_pending(kernel: Kernel) -> None:
    for _ in range(200):
        if kernel.permissions.pending(APP):
            return
        threading.Event().wait(0.01)
    raise AssertionError("no pending request appeared")


def test_permission_request_granted_denied_timed_out(kernel: Kernel) -> None:
    answer = _request(kernel, "fs.delete", 10_000)
    _wait_pending(kernel)
    assert "fs.delete" in cli(kernel, "permissions", "list", APP)
    cli(kernel, "permissions", "grant", APP, "fs.delete")
    assert answer.get(timeout=10) == {"granted": True}
    assert kernel.handle(APP, "fs.delete", {"path": "/appdata/x"}) == {"deleted": False}

    answer = _request(kernel, "fs.write", 10_000)
    _wait_pending(kernel)
    cli(kernel, "permissions", "deny", APP)
    assert answer.get(timeout=10) == {"granted": False}

    assert _request(kernel, "fs.write", 100).get(timeout=10) == {"granted": False}
    # Not requested by the manifest: refused without asking anyone.
    assert _request(kernel, "admin", 10_000).get(timeout=10)["granted"] is False
    assert kernel.permissions.pending(APP) == []
    outcomes = [(a["permission"], a["decision"]) for a in kernel.audit(APP)
                if a["method"] == "permission.request"]
    assert outcomes == [("fs.delete", "allowed"), ("fs.write", "denied"),
                        ("fs.write", "denied"), ("admin", "denied")]


def test_notifications_persist_and_are_listed(kernel: Kernel) -> None:
    kernel.handle(APP, "ui.notify", {"title": "t", "message": "m", "level": "warning"})
    rows = json.loads(cli(kernel, "notifications", "--json"))
    assert [(r["appId"], r["title"], r["level"]) for r in rows] == [(APP, "t", "warning")]


def test_clipboard_needs_its_permission(kernel: Kernel) -> None:
    with pytest.raises(PermissionDenied):
        kernel.handle(APP, "ui.clipboard.set", {"text": "x"})
    kernel.permissions.register("clip", ["ui.clipboard"])
    kernel.permissions.grant("clip", ["ui.clipboard"])
    kernel.handle("clip", "ui.clipboard.set", {"text": "hello"})
    assert kernel.handle("clip", "ui.clipboard.get", {}) == {"text": "hello"}


def test_process_methods_without_a_spawner(kernel: Kernel) -> None:
    kernel.permissions.register("boss", ["system.info", "process.kill"])
    kernel.permissions.grant("boss", ["system.info", "process.kill"])
    assert kernel.handle("boss", "process.list", {}) == []
    with pytest.raises(NotFound):
        kernel.handle("boss", "process.info", {"appId": "nobody"})
    with pytest.raises(PermissionDenied):
        kernel.handle("boss", "system.shutdown", {})


# -- the socket -----------------------------------------------------------------------

def _token(kernel: Kernel) -> str:
    return cli(kernel, "token", APP).strip()


def test_socket_client_is_identified_by_its_token(kernel: Kernel) -> None:
    assert kernel.socket is not None
    kernel.permissions.grant(APP, ["fs.write"])
    kernel.handle(APP, "fs.write", {"path": "/appdata/hello.txt", "text": "from the kernel"})
    client = EStarterClient.connect(path=str(kernel.socket.path), token=_token(kernel))
    try:
        assert client.fs.read_text("/appdata/hello.txt") == "from the kernel"
        with pytest.raises(PermissionDeniedError):
            client.system.info()
        events: queue.Queue[Any] = queue.Queue()
        client.on("system.event", events.put)
        cli(kernel, "permissions", "revoke", APP, "fs.write")
        assert events.get(timeout=5) == {"name": "permission.revoked",
                                         "data": {"permission": "fs.write"}}
    finally:
        client.close()


def test_socket_refuses_missing_wrong_and_replaced_tokens(kernel: Kernel) -> None:
    assert kernel.socket is not None
    path = str(kernel.socket.path)
    old = _token(kernel)
    _token(kernel)  # a new token replaces the old one
    for bad in (old, "est_wrong", "tool", ""):
        with pytest.raises((ApiError, ValueError)) as info:
            SocketTransport(path, bad, timeout=5)
        if isinstance(info.value, ApiError):
            assert info.value.code == -32001
    # A client that claims an app id instead of saying hello is dropped too.
    with socket.socket(socket.AF_UNIX) as raw:
        raw.settimeout(5)
        raw.connect(path)
        raw.sendall(encode_frame({"jsonrpc": "2.0", "id": 1, "method": "fs.read",
                                  "params": {"path": "/appdata/x", "appId": APP}}))
        data = b""
        while chunk := raw.recv(4096):
            data += chunk
    assert b"-32001" in data


def test_socket_file_and_folder_are_private(kernel: Kernel) -> None:
    assert kernel.socket is not None
    assert kernel.socket.path.stat().st_mode & 0o777 == 0o600
    assert kernel.socket.path.parent.stat().st_mode & 0o777 == 0o700


def test_socket_serves_concurrent_clients(kernel: Kernel) -> None:
    assert kernel.socket is not None
    token = _token(kernel)
    clients = [EStarterClient.connect(path=str(kernel.socket.path), token=token)
               for _ in range(8)]
    try:
        errors: list[BaseException] = []

        def ping(c: EStarterClient) -> None:
            try:
                for _ in range(50):
                    assert c.system.ping()["pong"] is True
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=ping, args=(c,)) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == []
        assert kernel.is_running(APP)
    finally:
        for c in clients:
            c.close()


def test_permission_error_names_the_app_and_says_how_to_grant(kernel: Kernel) -> None:
    with pytest.raises(PermissionDenied) as denied:
        kernel.handle(APP, "fs.write", {"path": "/appdata/a", "text": "1"})
    assert denied.value.data == {"permission": "fs.write", "appId": APP, "requested": True}
    error = ApiError.from_dict(denied.value.to_dict())  # what the SDK rebuilds
    assert isinstance(error, PermissionDeniedError) and error.permission == "fs.write"
    assert f"`estarter permissions grant {APP} fs.write`" in str(error)
    with pytest.raises(PermissionDenied) as unrequested:
        kernel.handle(APP, "system.info", {})
    assert unrequested.value.data["requested"] is False
    assert "manifest does not request system.info" in str(
        ApiError.from_dict(unrequested.value.to_dict()))
