"""StdoutSplitter (frames and text on one stream) and reading logs back (estarter.logs)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from estarter.logs import follow, logged_apps, parse, parse_since, read
from estarter.paths import log_file
from estarter.protocol.framing import FramingError, StdoutSplitter, encode_frame


def split(chunks: list[bytes], **kw: int) -> tuple[list[bytes], list[bytes]]:
    s = StdoutSplitter(**kw)
    bodies: list[bytes] = []
    text: list[bytes] = []
    for chunk in chunks:
        s.feed(chunk, bodies, text)
    return bodies, text + s.finish()


def test_frames_and_text_in_any_cut() -> None:
    stream = (b"hello\r\n" + encode_frame({"a": 1}) + b"between\n"
              + encode_frame({"b": "x\ny"}) + b"CONTENT-LENGTH: 2\r\n\r\n{}" + b"tail")
    want = ([b'{"a":1}', b'{"b":"x\\ny"}', b"{}"], [b"hello", b"between", b"tail"])
    for cut in range(len(stream)):
        assert split([stream[:cut], stream[cut:]]) == want, cut
    assert split([bytes([b]) for b in stream]) == want


def test_text_lines_are_cut_and_look_alikes_wait() -> None:
    assert split([b"x" * 25], max_line=10) == ([], [b"x" * 10, b"x" * 10, b"xxxxx"])
    assert split([b"Cont"]) == ([], [b"Cont"])  # at end of stream it was text
    assert split([b"Contents\n"]) == ([], [b"Contents"])
    assert split([b"Content-Length: 9\r\n\r\n{}"]) == ([], [])  # a partial frame: dropped


@pytest.mark.parametrize("bad", [b"Content-Length: x\r\n\r\n", b"Content-Type: a\r\n" * 600,
                                 b"Content-Length: 999\r\n\r\n"])
def test_framing_limits_hold_and_text_before_the_error_is_kept(bad: bytes) -> None:
    s = StdoutSplitter(max_size=100)
    bodies: list[bytes] = []
    text: list[bytes] = []
    with pytest.raises(FramingError):
        s.feed(b"last words\n" + bad, bodies, text)
    assert text == [b"last words"]
    with pytest.raises(FramingError):  # stays broken
        s.feed(b"more\n", bodies, text)


def write_log(home: Path, app: str, lines: list[str]) -> None:
    path = log_file(home, app)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


def test_parse_old_and_new_lines() -> None:
    new = parse("2026-11-29 10:00:00,250 WARNING stdout hi \\x1b", "a")
    assert (new.stream, new.level, new.message) == ("stdout", "warning", "hi \\x1b")
    assert new.time == datetime(2026, 11, 29, 10, 0, 0, 250000).timestamp()
    old = parse("2026-01-01 00:00:00,000 INFO line 1", "a")
    assert (old.stream, old.message) == ("app", "line 1")
    junk = parse("not a log line", "a")
    assert junk.time is None and junk.message == "not a log line"
    as_json = new.to_json()
    assert set(as_json) == {"time", "app", "stream", "level", "message"}
    assert as_json["time"].startswith("2026-11-29T10:00:00.250")


def test_parse_since() -> None:
    assert parse_since("10m", now=lambda: 1000.0) == 400.0
    assert parse_since("1.5h", now=lambda: 10_000.0) == 10_000.0 - 5400.0
    assert parse_since("2026-11-29T10:00") == datetime(2026, 11, 29, 10, 0).timestamp()
    assert parse_since("2026-11-29T10:00+00:00") == 1795946400.0
    with pytest.raises(ValueError, match="--since"):
        parse_since("yesterday")


def test_read_merges_apps_in_time_order_and_filters(tmp_path: Path) -> None:
    write_log(tmp_path, "a", ["2026-11-29 10:00:01,000 INFO stdout a1",
                              "2026-11-29 10:00:03,000 INFO stderr a3"])
    write_log(tmp_path, "b", ["2026-11-29 10:00:02,000 INFO estarter b2",
                              "2026-11-29 10:00:04,000 ERROR app b4"])
    assert logged_apps(tmp_path) == ["a", "b"]
    got = read(tmp_path, ["a", "b"])
    assert [line.message for line in got] == ["a1", "b2", "a3", "b4"]
    since = datetime(2026, 11, 29, 10, 0, 2, 500000).timestamp()
    assert [line.message for line in read(tmp_path, ["a", "b"], since)] == ["a3", "b4"]
    assert [line.message for line in read(tmp_path, ["a", "b"], lines=1)] == ["b4"]
    lines = [json.dumps(line.to_json()) for line in got]
    assert all("\n" not in line for line in lines)


def test_follow_sees_new_lines_of_every_app(tmp_path: Path) -> None:
    write_log(tmp_path, "a", ["2026-11-29 10:00:01,000 INFO stdout old"])
    seen: list[str] = []
    calls = 0

    def stop() -> bool:
        nonlocal calls
        calls += 1
        if calls == 2:  # after the first scan: one line for a, a new app b
            with open(log_file(tmp_path, "a"), "a") as fh:
                fh.write("2026-11-29 10:00:02,000 INFO stdout new a\n")
            write_log(tmp_path, "b", ["2026-11-29 10:00:03,000 INFO stdout new b"])
        return len(seen) >= 2

    for line in follow(tmp_path, lambda: logged_apps(tmp_path), stop, poll=0.01, rescan=0.0):
        seen.append(f"{line.app}:{line.message}")
    assert sorted(seen) == ["a:new a", "b:new b"]


def test_cli_logs_json_since_and_all_apps(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from estarter.cli import app

    home = tmp_path / "home"
    write_log(home, "a", ["2020-01-01 00:00:00,000 INFO stdout ancient",
                          "2999-01-01 00:00:01,000 INFO stdout a1 \\x1b[2J"])
    write_log(home, "b", ["2999-01-01 00:00:02,000 WARNING estarter b2"])

    def cli(*args: str) -> list[str]:
        result = CliRunner().invoke(app, ["logs", *args], env={"ESTARTER_HOME": str(home)})
        assert result.exit_code == 0, result.output
        return result.stdout.splitlines()

    assert cli("--all") == ["a | 2020-01-01 00:00:00,000 INFO stdout ancient",
                            "a | 2999-01-01 00:00:01,000 INFO stdout a1 \\x1b[2J",
                            "b | 2999-01-01 00:00:02,000 WARNING estarter b2"]
    assert cli() == cli("--all")
    objs = [json.loads(line) for line in cli("--json", "--since", "1d")]
    assert [(o["app"], o["stream"], o["level"], o["message"]) for o in objs] == [
        ("a", "stdout", "info", "a1 \\x1b[2J"), ("b", "estarter", "warning", "b2")]
    assert cli("a", "--since", "2990-01-01T00:00") == [
        "2999-01-01 00:00:01,000 INFO stdout a1 \\x1b[2J"]
    bad = CliRunner().invoke(app, ["logs", "--since", "soon"],
                             env={"ESTARTER_HOME": str(home)})
    assert bad.exit_code == 2 and "--since" in bad.stderr
