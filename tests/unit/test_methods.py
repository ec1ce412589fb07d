"""The one table of kernel methods and who reads it: the router, the VFS service,
admission (supervisors and socket clients) and the retry rule; the permission
client that the kernel and the VFS check calls against."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from estarter.errors import Busy, MethodNotFound, PermissionDenied, QuotaExceeded
from estarter.kernel.admission import Admission, FairExecutor
from estarter.kernel.core import Kernel
from estarter.kernel.fs_service import VfsService
from estarter.kernel.methods import (
    BLOCKING_METHODS,
    METHODS,
    VFS_METHODS,
    retry_on_restart,
)
from estarter.kernel.permission_client import PermissionClient
from estarter.kernel.permissions import PermissionManager
from estarter.kernel.router import Router
from estarter.paths import state_db

APP = "demo"


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[Kernel]:
    k = Kernel(tmp_path, PermissionManager(state_db(tmp_path)), serve_socket=False)
    try:
        yield k
    finally:
        k.shutdown()
        k.permissions.close()


def test_every_method_of_the_table_is_served_once(kernel: Kernel, tmp_path: Path) -> None:
    service = VfsService(tmp_path, PermissionManager(state_db(tmp_path)))
    kernel_methods = set(kernel.router.names())
    vfs_methods = set(service.router.names())
    assert kernel_methods | vfs_methods == set(METHODS)
    assert not kernel_methods & vfs_methods
    assert vfs_methods == VFS_METHODS == {m for m in METHODS if m.startswith("fs.")}
    assert {"ipc.receive", "permission.request", "process.launch"} <= BLOCKING_METHODS
    for name in kernel_methods:  # the router's permission is the table's
        assert kernel.router.lookup(name).permission == METHODS[name].permission


def test_router_refuses_a_method_missing_from_the_table() -> None:
    with pytest.raises(ValueError, match="not in the method table"):
        Router().add("fs.teleport", lambda c, p: None)


def test_retry_only_what_applying_twice_cannot_hurt() -> None:
    assert retry_on_restart("system.ping") and retry_on_restart("fs.read")
    assert retry_on_restart("fs.write", {"path": "/appdata/a", "text": "x"})
    assert not retry_on_restart("fs.write", {"path": "/appdata/a", "text": "x", "append": True})
    assert not retry_on_restart("ipc.send") and not retry_on_restart("process.launch")
    assert retry_on_restart("no.such.method")  # answered MethodNotFound either way


def test_admission_caps_each_apps_waiting_calls_alone() -> None:
    adm = Admission(max_waiting=2)
    adm.enter(APP, "ipc.receive")
    adm.enter(APP, "ipc.receive")
    with pytest.raises(Busy):
        adm.enter(APP, "permission.request")
    adm.enter("other", "ipc.receive")  # another app is not held up
    adm.leave(APP)
    adm.enter(APP, "ipc.receive")
    assert adm.waiting(APP) == 2 and adm.waiting("other") == 1


def test_fair_executor_queues_a_flooding_app_behind_itself() -> None:
    pool = concurrent.futures.ThreadPoolExecutor(4)
    fair = FairExecutor(pool, per_app=2)
    release = threading.Event()
    try:
        flood = [fair.submit("flood", release.wait, 30) for _ in range(10)]
        assert fair.queued("flood") == 8  # two on the pool, the rest in its own queue
        other = fair.submit("other", lambda: "served")
        assert other.result(timeout=30) == "served"  # not behind the flood
        assert not any(f.done() for f in flood)
        release.set()
        assert all(f.result(timeout=30) is True for f in flood)
        failing = fair.submit("flood", lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            failing.result(timeout=30)
        assert fair.queued("flood") == 0
    finally:
        release.set()
        pool.shutdown(wait=True)


class Authority(PermissionManager):
    """The permissions actor's class, in process, counting the audit rows shipped."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.shipped: list[str] = []

    def append_audit(self, rows: Any, allowed: Any = ()) -> None:
        rows, allowed = list(rows), list(allowed)
        self.shipped += [r[4] for r in rows] + [f"allowed x{a[3]}" for a in allowed]
        super().append_audit(rows, allowed)


def test_permission_client_changes_through_the_authority_and_checks_its_commits(
        tmp_path: Path) -> None:
    db = state_db(tmp_path)
    authority = Authority(db)
    client = PermissionClient(db, authority)
    try:
        client.register(APP, ["fs.read", "fs.write"])
        assert client.requested(APP) == {"fs.read", "fs.write"}
        assert not client.check(APP, "fs.write", "fs.write")
        assert client.grant(APP, ["fs.write"]) == {"fs.read", "fs.write"}
        assert client.check(APP, "fs.write", "fs.write")
        authority.revoke(APP, ["fs.write"], by="cli")  # e.g. the CLI, through the actor
        assert not client.check(APP, "fs.write", "fs.write")  # the very next check
        client.flush()
        assert authority.shipped == ["denied", "denied", "allowed x1"]
        decisions = [a["decision"] for a in client.audit(APP)]
        assert decisions == ["denied", "granted", "allowed", "revoked", "denied"]
        rid = client.open_request(APP, "fs.read", "why")
        assert client.request_decision(rid) is None and client.pending(APP)
        assert client.deny(APP) == 1 and client.request_decision(rid) == "denied"
    finally:
        client.close()
        authority.close()


def test_permission_client_registers_through_the_authority_only_what_changed(
        tmp_path: Path) -> None:
    db = state_db(tmp_path)
    authority = Authority(db)
    calls: list[list[str]] = []
    register = authority.register

    def counted(app_id: str, requested: Any) -> None:
        calls.append(list(requested))
        register(app_id, requested)

    authority.register = counted  # type: ignore[method-assign]
    client = PermissionClient(db, authority)
    try:
        client.register(APP, ["fs.read", "fs.write"])
        client.register(APP, ["fs.write", "fs.read"])  # a relaunch: the same set
        assert calls == [["fs.read", "fs.write"]]
        client.register(APP, ["fs.read"])  # the manifest changed
        assert calls[-1] == ["fs.read"] and client.requested(APP) == {"fs.read"}
        authority.register(APP, ["ui.notify"])  # another writer (the CLI's install)
        client.register(APP, ["fs.read"])  # the snapshot sees that commit: sent again
        assert calls[-1] == ["fs.read"] and len(calls) == 4
        assert client.requested(APP) == {"fs.read"}
    finally:
        client.close()
        authority.close()


def test_vfs_service_checks_permissions_and_quotas(tmp_path: Path) -> None:
    pm = PermissionManager(state_db(tmp_path))
    service = VfsService(tmp_path, pm)
    try:
        pm.register(APP, ["fs.read", "fs.write"])
        with pytest.raises(PermissionDenied):
            service.handle(APP, "fs.write", {"path": "/appdata/a.txt", "text": "x"})
        pm.grant(APP, ["fs.write"])
        service.set_quota(APP, 10)
        service.handle(APP, "fs.write", {"path": "/appdata/a.txt", "text": "0123456789"})
        with pytest.raises(QuotaExceeded):
            service.handle(APP, "fs.write", {"path": "/appdata/b.txt", "text": "x"})
        assert service.handle(APP, "fs.read", {"path": "/appdata/a.txt"})["text"] == \
            "0123456789"
        with pytest.raises(MethodNotFound):
            service.handle(APP, "system.ping", {})
        pm.revoke(APP, ["fs.read"])
        with pytest.raises(PermissionDenied):
            service.handle(APP, "fs.read", {"path": "/appdata/a.txt"})
    finally:
        pm.close()


def test_kernel_forwards_fs_calls_to_its_vfs(kernel: Kernel) -> None:
    seen: list[tuple[str, str]] = []

    class FakeVfs:
        def handle(self, app_id: str, method: str, params: Any = None) -> Any:
            seen.append((app_id, method))
            return {"exists": True}

        def set_quota(self, app_id: str, quota_bytes: int) -> None:
            pass

        def flush_audit(self) -> None:
            pass

    kernel.vfs = FakeVfs()
    assert kernel.handle(APP, "fs.exists", {"path": "/appdata/x"}) == {"exists": True}
    assert seen == [(APP, "fs.exists")]


def test_socket_clients_of_one_app_share_its_cap_of_waiting_calls(tmp_path: Path) -> None:
    from sdk import BusyError, EStarterClient
    from tests.apps import wait_until

    k = Kernel(tmp_path, PermissionManager(state_db(tmp_path)))
    clients: list[EStarterClient] = []
    try:
        assert k.socket is not None
        k.permissions.register(APP, ["ipc.receive", "ipc.send"])
        k.permissions.register("other", ["ipc.send"])
        token = k.tokens.issue(APP)
        clients = [EStarterClient.connect(path=str(k.socket.path), token=token)
                   for _ in range(2)]
        waiting: list[concurrent.futures.Future[Any]] = []
        pool = concurrent.futures.ThreadPoolExecutor(8)
        for i in range(8):  # spread over both connections
            waiting.append(pool.submit(clients[i % 2].ipc.receive, 20_000))
        assert wait_until(lambda: k.socket is not None
                          and k.socket.admission.waiting(APP) == 8, 30)
        with pytest.raises(BusyError):
            clients[0].call("ipc.receive", {"timeoutMs": 20_000}, timeout=30)
        assert clients[1].system.ping()["pong"] is True  # quick calls are not held
        for n in range(8):
            k.handle("other", "ipc.send", {"to": APP, "message": n})
        got = sorted(f.result(timeout=30)["message"] for f in waiting)
        assert got == list(range(8))
        assert wait_until(lambda: k.socket is not None
                          and k.socket.admission.waiting(APP) == 0, 30)
        pool.shutdown(wait=True)
    finally:
        for c in clients:
            c.close()
        k.shutdown()
        k.permissions.close()
