"""The supervisor's forwarding of an app's calls: waiting calls are capped per app."""

from __future__ import annotations

import concurrent.futures
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from estarter.errors import Busy
from estarter.hosting.base import ExitInfo, ExitReason, HostContext, HostState
from estarter.manifest import AppManifest
from estarter.policy import SandboxPolicy
from estarter.supervision import MAX_WAITING_CALLS, Supervisor


class HeldKernel:
    """A kernel port whose calls stay pending until the test settles them."""

    def __init__(self) -> None:
        self.pending: list[concurrent.futures.Future[Any]] = []
        self.exits: list[dict[str, Any]] = []
        self.sent: list[str] = []  # "running", "logs: <messages>", "call <method>"

    def call(self, app_id: str, method: str, params: Any) -> concurrent.futures.Future[Any]:
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.pending.append(fut)
        self.sent.append(f"call {method}")
        return fut

    def running(self, app_id: str, run_id: int, info: dict[str, Any]) -> None:
        self.sent.append("running")

    def logs(self, app_id: str, lines: list[tuple[str, str, str]]) -> None:
        self.sent.append("logs: " + " | ".join(line[1] for line in lines))

    def exited(self, app_id: str, run_id: int, exit_info: dict[str, Any]) -> None:
        self.exits.append(exit_info)


class IdleHost:
    """Runs nothing; keeps the context so the test can call as the app would."""

    app_id = "t"
    pid = None

    def __init__(self, ctx: HostContext) -> None:
        self.ctx = ctx
        self.state = HostState.STARTING

    def start(self) -> None:
        self.state = HostState.RUNNING

    def stop(self, grace: float = 5.0) -> ExitInfo:
        info = ExitInfo(None, ExitReason.STOPPED)
        self.state = HostState.EXITED
        self.ctx.on_exit(info)
        return info

    def wait(self, timeout: float | None = None) -> ExitInfo | None:
        return None

    def notify(self, method: str, params: Any) -> None:
        pass

    def info(self) -> dict[str, Any]:
        return {"state": self.state.value}

    def close(self) -> None:
        pass


@contextlib.contextmanager
def started(tmp_path: Path) -> Iterator[tuple[HeldKernel, HostContext]]:
    """A started supervisor of an idle host: its kernel port and the host's context.
    Every call still held is answered, and the supervisor closed, on the way out."""
    hosts: list[IdleHost] = []

    def factory(policy: SandboxPolicy, ctx: HostContext) -> IdleHost:
        hosts.append(IdleHost(ctx))
        return hosts[-1]

    manifest = AppManifest.model_validate({"id": "t", "entry": "app.py"})
    kernel = HeldKernel()
    sup = Supervisor(SandboxPolicy.from_manifest(manifest, tmp_path), 1, kernel, tmp_path,
                     host_factory=factory)
    sup.start()
    try:
        yield kernel, hosts[0].ctx
    finally:
        for fut in kernel.pending:
            if not fut.done():
                fut.set_result(None)
        sup.close()


def test_waiting_calls_are_capped_per_app(tmp_path: Path) -> None:
    with started(tmp_path) as (kernel, ctx):
        api = ctx.api
        waiting = [api("ipc.receive", {"timeoutMs": 30000}) for _ in range(MAX_WAITING_CALLS)]
        refused = api("ipc.receive", {"timeoutMs": 30000})
        with pytest.raises(Busy):
            refused.result(timeout=1)
        quick = api("system.ping", {})  # quick calls are not counted
        assert not quick.done() and len(kernel.pending) == MAX_WAITING_CALLS + 1
        kernel.pending[0].set_result(None)  # one waiting call ends: room for another
        assert waiting[0].result(timeout=1) is None
        again = api("permission.request", {"permission": "fs.write"})
        assert not again.done()


def test_the_start_line_reaches_the_kernel_at_start_not_with_the_first_call(
        tmp_path: Path) -> None:
    """Else the app's first call carries it, and waits for the kernel to take it."""
    with started(tmp_path) as (kernel, ctx):
        assert kernel.sent[0] == "running"
        assert kernel.sent[1].startswith("logs: app started: run 1")
        ctx.api("system.ping", {})
        assert kernel.sent[2:] == ["call system.ping"]


def test_the_start_marker_comes_before_what_the_app_printed_at_once(tmp_path: Path) -> None:
    """A host reads the app's output on threads of its own, which may log a line
    before ``start`` returns (under load they did): the marker is written as the app
    spawns (``HostContext.on_spawned``), so it is still the run's first line."""

    class EagerHost(IdleHost):
        def start(self) -> None:
            if self.ctx.on_spawned is not None:
                self.ctx.on_spawned(4242)
            assert self.ctx.tagged_log is not None
            self.ctx.tagged_log("info", "printed at once", "stdout")  # a reader's line
            self.state = HostState.RUNNING

    kernel = HeldKernel()
    manifest = AppManifest.model_validate({"id": "t", "entry": "app.py"})
    sup = Supervisor(SandboxPolicy.from_manifest(manifest, tmp_path), 1, kernel, tmp_path,
                     host_factory=lambda policy, ctx: EagerHost(ctx))
    sup.start()
    try:
        shipped = next(s for s in kernel.sent if s.startswith("logs: "))
        assert shipped.startswith("logs: app started: run 1, version"), kernel.sent
        assert "pid 4242" in shipped and shipped.endswith(" | printed at once")
    finally:
        sup.close()
