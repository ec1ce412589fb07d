"""What an app writes reaches its log, tagged with its stream (issue 13, item 2):
a shell app's echo, a print before connecting, an app that never connects, run
markers, and the drop count of a flood while the flood lasts. Both modes."""

from __future__ import annotations

import json
import re
from pathlib import Path

from estarter.hosting.base import ExitReason
from estarter.logs import parse
from estarter.paths import log_file
from estarter.runtime import Runtime
from tests.apps import wait_until, write_app


def shell_app(root: Path, app_id: str, script: str, **manifest: object) -> Path:
    folder = root / app_id
    folder.mkdir(parents=True)
    entry = folder / "app.sh"
    entry.write_text("#!/bin/sh\n" + script)
    entry.chmod(0o755)
    data = {"id": app_id, "runtime": "native", "entry": "app.sh", **manifest}
    (folder / "manifest.json").write_text(json.dumps(data))
    return folder


def logged(rt: Runtime, app_id: str) -> list[tuple[str, str]]:
    """(stream, message) of every line of the app's log file."""
    try:
        text = log_file(rt.home, app_id).read_text()
    except FileNotFoundError:
        return []
    return [(line.stream, line.message) for line in map(lambda r: parse(r, app_id),
                                                           text.splitlines())]


def test_shell_echo_is_logged_as_stdout_with_run_markers(runtime: Runtime,
                                                         tmp_path: Path) -> None:
    folder = shell_app(tmp_path, "echoer", "echo hello from echo\necho oops >&2\nexit 3\n",
                       version="1.4.2")
    info = runtime.launch(folder).wait(timeout=60)
    assert info is not None and (info.code, info.reason) == (3, ExitReason.CRASHED)
    lines = logged(runtime, "echoer")
    assert ("stdout", "hello from echo") in lines, lines
    assert ("stderr", "oops") in lines, lines
    starts = [m for s, m in lines if s == "estarter" and m.startswith("app started: run ")]
    assert len(starts) == 1 and "version 1.4.2" in starts[0], lines
    ends = [m for s, m in lines if s == "estarter" and m.startswith("app ended: ")]
    assert ends == [f"app ended: crashed (code 3), run {runtime.info('echoer')['runId']}: "
                    "exit code 3"], lines
    assert lines.index(("stdout", "hello from echo")) > lines.index(("estarter", starts[0]))


def test_prints_before_connect_and_without_connect_are_logged(runtime: Runtime,
                                                              tmp_path: Path) -> None:
    sdk_app = write_app(tmp_path, "early", """
        print("printed before connect")
        from sdk import EStarterClient
        client = EStarterClient.connect()
        print("printed after connect")
        client.system.ping()
        client.close()
        """, prelude=False)
    never = write_app(tmp_path, "never", 'print("never connects")\n', prelude=False)
    for folder, app_id in ((sdk_app, "early"), (never, "never")):
        info = runtime.launch(folder).wait(timeout=60)
        assert info is not None and info.reason is ExitReason.EXITED, logged(runtime, app_id)
    early = logged(runtime, "early")
    assert ("stdout", "printed before connect") in early, early
    assert ("stdout", "printed after connect") in early, early
    assert ("stdout", "never connects") in logged(runtime, "never")


def test_a_burst_shows_its_drop_count_while_it_lasts(runtime: Runtime,
                                                     tmp_path: Path) -> None:
    # 30,000 lines at once, then the app stays: the drop count must be in the log
    # before the app ends (not only in the line written at its end). At 100 lines a
    # second (a burst of 250) the lines outrun the limit however slowly a loaded host
    # reads them; at the default 2000 a slow reader was itself the limit.
    folder = shell_app(tmp_path, "burst", "seq 30000\nexec sleep 120\n",
                       maxRuntimeSeconds=150, logLinesPerSecond=100)
    handle = runtime.launch(folder)
    try:
        def drops() -> list[str]:
            return [m for s, m in logged(runtime, "burst")
                    if s == "estarter" and "log lines dropped" in m]

        assert wait_until(drops, 60), logged(runtime, "burst")[-5:]
        assert handle.wait(timeout=0) is None  # still running: reported during the burst
        count = int(re.match(r"\[(\d+) log lines dropped", drops()[0]).group(1))  # type: ignore[union-attr]
        assert count > 0
        kept = [m for s, m in logged(runtime, "burst") if s == "stdout"]
        assert kept[:3] == ["1", "2", "3"] and len(kept) < 30000
    finally:
        handle.stop(grace=1.0)
