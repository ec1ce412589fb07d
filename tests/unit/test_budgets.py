"""Budgets on what apps share, without processes: log text, the event log, the
audit table, the endpoint's own log and batch caps (issue 10, part 2)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from estarter.cli import app as cli_app
from estarter.errors import InvalidRequest
from estarter.hosting.applog import LEVELS, LOG_LINE_MAX, BoundedLog, level_of, one_line
from estarter.kernel.events import EventLog
from estarter.kernel.permissions import PermissionManager
from estarter.paths import log_file
from estarter.protocol import messages as m
from estarter.protocol.endpoint import Endpoint
from estarter.supervision import _AppLog

# -- log text: one message, one line, every field capped ----------------------------------


def test_levels_are_an_enum_and_text_is_one_escaped_line() -> None:
    assert level_of("x" * (8 << 20)) == "info"
    assert [level_of(v) for v in ("ERROR", "warn", 3, None, "debug")] == [
        "error", "warning", "info", "info", "debug"]
    line = one_line("a\nforged 12:00 ERROR b\r\x1b[2J\x07\u2028\tend")
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert line == "a\\nforged 12:00 ERROR b\\r\\x1b[2J\\x07\\u2028\tend"
    cut = one_line("y" * (8 << 20))
    assert len(cut) == LOG_LINE_MAX + len(" [cut]") and cut.endswith("[cut]")
    assert one_line(b"\xff\x1b") == "\ufffd\\x1b"


def test_bounded_log_caps_fields_and_counts_drops() -> None:
    got: list[tuple[str, str]] = []
    now = [0.0]
    log = BoundedLog(lambda level, text, stream: got.append((level, text)), rate=1000,
                     burst=10_000, clock=lambda: now[0], line_rate=10, line_burst=20)
    for _ in range(100):
        log.line("L" * (8 << 20), "m" * (8 << 20))
    # 10,000 bytes of budget: one capped line (8 KiB) passes, the rest are counted;
    # the first drop is reported at once (the flood is still on), the rest wait a second.
    assert len(got) == 2 and got[0][0] == "info" and len(got[0][1]) <= LOG_LINE_MAX + 6
    assert got[1] == ("warning", "[1 log lines dropped: over 10 lines/s or 1000 bytes/s; "
                                 "1 in all]")
    assert log.dropped == 99
    for _ in range(50):
        log.line("info", "short")
    now[0] += 100.0  # refilled: the rest of the drop is reported once, then lines pass
    log.line("error", "after")
    assert got[-2][1].startswith("[129 log lines dropped") and "130 in all" in got[-2][1]
    assert got[-1] == ("error", "after")
    assert all(level in LEVELS for level, _ in got)


def test_event_log_is_bounded_in_bytes_not_only_entries() -> None:
    events = EventLog(capacity=20000, max_bytes=1 << 20)
    for i in range(200):
        events.append("log", "flood", level="info", message="x" * 100_000, n=i)
    stats = events.statistics()
    assert stats["bytes"] <= 1 << 20 and stats["events"] <= 11
    batch = events.since(1)
    assert batch["missed"] >= 188 and batch["events"][-1]["n"] == 199
    events.append("log", "neighbour", level="info", message="still here")
    assert events.since(0, app_id="neighbour")["events"][0]["message"] == "still here"


def test_kernel_keeps_capped_log_fields(tmp_path: Path) -> None:
    from estarter.kernel.core import Kernel
    from estarter.paths import state_db

    home = tmp_path / "home"
    kernel = Kernel(home, PermissionManager(state_db(home)), serve_socket=False)
    try:
        kernel.app_logs("a", [("L" * (8 << 20), "m\x1b[2J" + "x" * (8 << 20))])
        (event,) = kernel.events.since(0)["events"]
        assert event["level"] == "info" and event["message"].startswith("m\\x1b[2J")
        assert len(event["message"]) <= 4 * LOG_LINE_MAX + 6  # cut, then escaped
    finally:
        kernel.shutdown()


# -- `estarter logs` never prints raw escape sequences -----------------------------------


def test_logs_command_escapes_control_characters(tmp_path: Path) -> None:
    home = tmp_path / "home"
    path = log_file(home, "evil")
    app_log = _AppLog(path, "evil")
    app_log.write("info", "clear\x1b[2J\rforged line\nsecond")
    app_log.close()
    with open(path, "a", encoding="utf-8") as fh:  # a line of an older, unescaped file
        fh.write("old \x1b]0;title\x07 \x1b[31mred\r\n")
    text = path.read_text(encoding="utf-8")
    assert text.count("\n") == 2  # one message, one line
    result = CliRunner().invoke(cli_app, ["logs", "evil", "--home", str(home)])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\r" not in result.output
    assert "\x07" not in result.output
    assert "clear\\x1b[2J\\rforged line\\nsecond" in result.output
    assert "old \\x1b]0;title\\x07 \\x1b[31mred" in result.output


# -- the audit table ----------------------------------------------------------------------


def test_audit_aggregates_allowed_calls_and_caps_denials(tmp_path: Path) -> None:
    now = [1000.0]
    pm = PermissionManager(tmp_path / "kernel.db", clock=lambda: now[0],
                           audit_rows_per_app=100)
    try:
        for app in ("busy", "neighbour"):
            pm.register(app, ["fs.read"])
        for _ in range(5):
            pm.check("neighbour", "system.info", "system.info")
        for i in range(20_000):
            now[0] += 0.001
            pm.check("busy", "fs.read", "fs.read" if i % 2 else "fs.list")
        for _ in range(1000):
            pm.check("busy", "system.info", "system.info")  # denied: not requested
        size = pm.audit_size()
        assert size["rows"] <= 100 + 5 and size["allowed"] == 1
        busy = pm.audit("busy", limit=10_000)
        allowed = [a for a in busy if a["decision"] == "allowed"]
        assert len(allowed) == 1 and allowed[0]["count"] == 20_000
        assert allowed[0]["firstTime"] < allowed[0]["time"]
        assert len([a for a in busy if a["decision"] == "denied"]) == 100
        # The neighbour's denials survive the busy app's flood.
        assert len([a for a in pm.audit("neighbour") if a["decision"] == "denied"]) == 5
        # Aggregates add up across flushes and processes.
        pm.check("busy", "fs.read", "fs.stat")
        pm.flush()
        again = PermissionManager(tmp_path / "kernel.db")
        try:
            (row,) = [a for a in again.audit("busy") if a["decision"] == "allowed"]
            assert row["count"] == 20_001 and row["method"] == "fs.stat"
        finally:
            again.close()
    finally:
        pm.close()


# -- the endpoint: unknown answers, its own log, batches ---------------------------------


class Wire:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    def __call__(self, obj: Any) -> None:
        self.sent.append(obj)


def test_unknown_answers_are_malformed_and_the_default_log_is_throttled(caplog: Any) -> None:
    ep = Endpoint(lambda method, params: None, Wire())
    caplog.set_level(logging.DEBUG)
    for i in range(50_000):
        ep.receive(json.dumps({"jsonrpc": "2.0", "id": 10**6 + i,
                               "error": {"code": -32000, "message": "x" * 200}}))
    assert ep.statistics().malformed == 50_000
    logged = sum(len(r.getMessage()) for r in caplog.records)
    assert logged < 20_000, f"{len(caplog.records)} lines, {logged} bytes"


def test_batches_are_capped_in_entries_and_bytes() -> None:
    calls: list[str] = []
    wire = Wire()
    ep = Endpoint(lambda method, params: calls.append(method), wire)
    ping = {"jsonrpc": "2.0", "method": "system.ping"}
    ep.receive(json.dumps([{**ping, "id": i} for i in range(100_000)]))
    ep.receive(json.dumps([{**ping, "id": i} for i in range(m.MAX_BATCH_ENTRIES + 1)]))
    ep.receive(json.dumps([{**ping, "id": 1, "params": ["x" * m.MAX_BATCH_BYTES]}]))
    assert calls == [] and ep.statistics().malformed == 3
    for reply in wire.sent:
        assert reply["error"]["code"] == InvalidRequest.code and reply["id"] is None
    ep.receive(json.dumps([{**ping, "id": i} for i in range(m.MAX_BATCH_ENTRIES)]))
    assert len(calls) == m.MAX_BATCH_ENTRIES and len(wire.sent[-1]) == m.MAX_BATCH_ENTRIES
