"""ProcessHost: stdout is frames and app text; text is logged as stdout, under the same
budget as stderr, and a malformed frame is still a protocol violation."""

from __future__ import annotations

import concurrent.futures
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from estarter.hosting.base import ExitReason, HostContext
from estarter.hosting.process_host import ProcessHost
from estarter.manifest import AppManifest
from estarter.policy import SandboxPolicy

TIMEOUT = 60


class Lines:
    """A tagged log sink that records (stream, message) and wakes waiters."""

    def __init__(self) -> None:
        self.got: list[tuple[str, str]] = []
        self.cond = threading.Condition()

    def __call__(self, level: str, message: str, stream: str = "estarter") -> None:
        with self.cond:
            self.got.append((stream, message))
            self.cond.notify_all()

    def wait_for(self, predicate: Any, timeout: float = TIMEOUT) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self.got), timeout)


def _api(method: str, params: Any) -> concurrent.futures.Future[Any]:
    fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
    fut.set_result({"pong": True} if method == "system.ping" else None)
    return fut


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Any]:
    made: list[ProcessHost] = []

    def make(source: str, **manifest: Any) -> tuple[ProcessHost, Lines]:
        folder = tmp_path / f"app{len(made)}"
        folder.mkdir()
        (folder / "app.py").write_text(textwrap.dedent(source))
        m = AppManifest.model_validate({"id": "t", "runtime": "python", "entry": "app.py",
                                        **manifest})
        lines = Lines()
        ctx = HostContext(api=_api, log=lines, on_exit=lambda info: None,
                          home=tmp_path / "home", appdata=tmp_path / "home" / "appdata",
                          tagged_log=lines,
                          on_spawned=lambda pid: lines("info", f"spawned {pid}"))
        host = ProcessHost(SandboxPolicy.from_manifest(m, folder), ctx)
        made.append(host)
        return host, lines

    try:
        yield make
    finally:
        for host in made:
            host.close()


def test_text_between_frames_is_stdout_and_frames_still_work(hosts: Any) -> None:
    host, lines = hosts("""
        import os, sys
        from sdk._wire import encode_frame, read_frame
        os.write(1, b"plain text\\r\\ncontent of a line\\n")
        os.write(1, encode_frame({"jsonrpc": "2.0", "id": 1, "method": "system.ping"}))
        reply = read_frame(sys.stdin.buffer)
        os.write(1, b"after: " + reply + b"\\nno newline at the end")
        """)
    host.start()
    info = host.wait(TIMEOUT)
    assert info is not None and info.reason is ExitReason.EXITED, lines.got
    stdout = [m for s, m in lines.got if s == "stdout"]
    assert stdout == ["plain text", "content of a line",
                      'after: {"jsonrpc":"2.0","result":{"pong":true},"id":1}',
                      "no newline at the end"]


@pytest.mark.parametrize("bad", [b"Content-Length: lots\r\n\r\n",
                                 b"content-length: 99999999999\r\n\r\n",
                                 b"Content-Length: 5\r\nnot a header\r\n\r\n",
                                 b"Content-Type: x\r\n" + b"y" * 9000])
def test_a_malformed_frame_is_still_a_violation(hosts: Any, bad: bytes) -> None:
    host, lines = hosts(f"""
        import os, time
        os.write(1, b"text first\\n" + {bad!r})
        time.sleep(30)
        """)
    host.start()
    info = host.wait(TIMEOUT)
    assert info is not None and info.reason is ExitReason.PROTOCOL_VIOLATION, lines.got
    assert ("stdout", "text first") in lines.got


def test_text_spends_the_log_budget_and_drops_show_during_the_flood(hosts: Any) -> None:
    # 30,000 lines (and one endless line) at once, then the app waits: text is no
    # way around the budget, and the drop count is logged while the app still runs.
    host, lines = hosts("""
        import os, sys, time
        sys.stdout.write("".join(f"line {i}\\n" for i in range(30000)))
        sys.stdout.write("z" * 100_000 + "\\n")
        sys.stdout.flush()
        time.sleep(60)
        """, logLinesPerSecond=100)
    host.start()
    try:
        assert lines.wait_for(lambda got: any(
            s == "estarter" and "log lines dropped: over 100 lines/s" in m for s, m in got))
        assert host.wait(0) is None  # the app still runs
        assert lines.wait_for(lambda got: host.info()["messages"]["droppedLogLines"] > 29000)
        stdout = [m for s, m in lines.got if s == "stdout"]
        assert stdout[:2] == ["line 0", "line 1"] and len(stdout) < 1000
        assert all(len(m) <= 8192 + len(" [cut]") for m in stdout)
        assert host.info()["messages"]["logLinesPerSecond"] == 100
    finally:
        host.stop(grace=0)


def test_the_spawn_is_told_before_any_output_is_read(hosts: Any) -> None:
    """The supervisor writes the run's start marker from ``on_spawned``: it must come
    before the first line the app prints, however fast the app prints it."""
    host, lines = hosts("""
        import os
        os.write(1, b"first words\\n")
        os.write(2, b"and an error\\n")
        """)
    host.start()
    assert host.wait(TIMEOUT) is not None
    assert lines.wait_for(lambda got: ("stderr", "and an error") in got)
    assert lines.got[0] == ("estarter", f"spawned {host.pid}"), lines.got
    assert ("stdout", "first words") in lines.got
