"""The kernel API end to end, through real hosted apps, in local mode and on Ray.

Apps report with ``REPORT {json}`` lines on stderr (they reach the runtime's event
log), so an app without ``ui.notification`` can report too. Each test launches a
few apps that exercise many methods each, to keep Ray-mode launches few.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from estarter import cli_kernel
from estarter.hosting.base import ExitReason
from estarter.kernel.ipc import MAX_INBOX_BYTES
from estarter.runtime import Runtime

REPO = Path(__file__).resolve().parents[2]
PRELUDE = """\
import json, sys, time
from sdk import EStarterClient, ApiError
client = EStarterClient.connect()
def report(**values):
    print("REPORT " + json.dumps(values), file=sys.stderr, flush=True)
def attempt(name, fn):
    try:
        report(call=name, ok=True, result=fn())
    except ApiError as exc:
        report(call=name, ok=False, code=exc.code, data=exc.data)
"""


def write_app(root: Path, app_id: str, source: str, **manifest: Any) -> Path:
    folder = root / "apps-src" / app_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "app.py").write_text(PRELUDE + textwrap.dedent(source))
    (folder / "manifest.json").write_text(json.dumps(
        {"id": app_id, "runtime": "python", "entry": "app.py", **manifest}))
    return folder


def reports(rt: Runtime, app_id: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    since = 0
    while True:
        batch = rt.events(since, 0.0, app_id)
        for ev in batch["events"]:
            msg = ev.get("message", "")
            if ev["event"] == "log" and msg.startswith("REPORT "):
                out.append(json.loads(msg[7:]))
        if not batch["events"]:
            return out
        since = batch["next"]


def wait_report(rt: Runtime, app_id: str, pred: Any, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for rep in reports(rt, app_id):
            if pred(rep):
                return rep
        rt.events(rt.event_cursor(), 0.2, app_id)  # wait for something new, bounded
    raise AssertionError(f"{app_id}: no matching report in {timeout} s: {reports(rt, app_id)}")


def by_call(reps: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["call"]: r for r in reps if "call" in r}


def cli(home: Path, *args: str) -> str:
    result = CliRunner().invoke(cli_kernel.app, [*args, "--home", str(home)])
    assert result.exit_code == 0, result.output
    return result.output


# Every permissioned method of DESIGN's kernel table, with params that would have a
# visible side effect if the call went through.
GUARDED = """
attempt("system.info", lambda: client.call("system.info"))
attempt("fs.write", lambda: client.call("fs.write", {"path": "/appdata/denied.txt", "text": "x"}))
attempt("fs.read", lambda: client.call("fs.read", {"path": "/shared/seed.txt"}))
attempt("fs.delete", lambda: client.call("fs.delete", {"path": "/shared/seed.txt"}))
attempt("fs.mkdir", lambda: client.call("fs.mkdir", {"path": "/appdata/denied-dir"}))
attempt("fs.list", lambda: client.call("fs.list", {"path": "/shared"}))
attempt("fs.exists", lambda: client.call("fs.exists", {"path": "/shared/seed.txt"}))
attempt("fs.stat", lambda: client.call("fs.stat", {"path": "/shared/seed.txt"}))
attempt("ui.notify", lambda: client.call("ui.notify", {"title": "denied", "message": "x"}))
attempt("ui.clipboard.set", lambda: client.call("ui.clipboard.set", {"text": "denied"}))
attempt("ui.clipboard.get", lambda: client.call("ui.clipboard.get"))
attempt("ipc.send", lambda: client.call("ipc.send", {"to": "listener", "message": "denied"}))
attempt("ipc.broadcast", lambda: client.call("ipc.broadcast", {"topic": "news",
                                                               "message": "denied"}))
attempt("ipc.subscribe", lambda: client.call("ipc.subscribe", {"topic": "news"}))
attempt("ipc.unsubscribe", lambda: client.call("ipc.unsubscribe", {"topic": "news"}))
attempt("ipc.receive", lambda: client.call("ipc.receive", {"timeoutMs": 0}))
attempt("registry.set", lambda: client.call("registry.set", {"key": "k", "value": 1}))
attempt("registry.get", lambda: client.call("registry.get", {"key": "k"}))
attempt("registry.list", lambda: client.call("registry.list", {}))
attempt("registry.delete", lambda: client.call("registry.delete", {"key": "k"}))
attempt("process.list", lambda: client.call("process.list"))
attempt("process.info", lambda: client.call("process.info", {"appId": "listener"}))
attempt("process.launch", lambda: client.call("process.launch", {"appId": "helper"}))
attempt("process.terminate", lambda: client.call("process.terminate", {"appId": "listener"}))
attempt("system.shutdown", lambda: client.call("system.shutdown"))
report(free="permission.request", result=client.call(
    "permission.request", {"permission": "fs.delete", "timeoutMs": 100}))
report(free="permission.check", result=client.call("permission.check",
                                                   {"permission": "fs.read"}))
report(free="permission.list", result=client.call("permission.list"))
report(free="system.ping", result=client.call("system.ping")["pong"])
"""
NEEDS = {"system.info": "system.info", "fs.write": "fs.write", "fs.read": "fs.read",
         "fs.delete": "fs.delete", "fs.mkdir": "fs.write", "fs.list": "fs.read",
         "fs.exists": "fs.read", "fs.stat": "fs.read", "ui.notify": "ui.notification",
         "ui.clipboard.set": "ui.clipboard", "ui.clipboard.get": "ui.clipboard",
         "ipc.send": "ipc.send", "ipc.broadcast": "ipc.broadcast",
         "ipc.subscribe": "ipc.receive", "ipc.unsubscribe": "ipc.receive",
         "ipc.receive": "ipc.receive", "registry.set": "fs.write", "registry.get": "fs.read",
         "registry.list": "fs.read", "registry.delete": "fs.write",
         "process.list": "system.info", "process.info": "system.info",
         "process.launch": "process.launch", "process.terminate": "process.kill",
         "system.shutdown": "admin"}

ALLOWED = """
client.call("ipc.receive", {"timeoutMs": 0})  # pull mode before anyone sends
attempt("system.ping", lambda: client.system.ping()["pong"])
attempt("system.time", lambda: client.system.time() > 0)
attempt("system.info", lambda: sorted(client.system.info()))
attempt("fs.write", lambda: client.fs.write_text("/appdata/d/a.txt", "héllo"))
attempt("fs.write.append", lambda: client.fs.write_text("/appdata/d/a.txt", "!", append=True))
attempt("fs.write.base64", lambda: client.fs.write_bytes("/cache/b.bin", bytes([0, 255])))
attempt("fs.read", lambda: client.fs.read_text("/appdata/d/a.txt"))
attempt("fs.read.base64", lambda: list(client.fs.read_bytes("/cache/b.bin")))
attempt("fs.read.escape", lambda: client.fs.read_text("/appdata/../../state.db"))
attempt("fs.read.shared", lambda: client.fs.read_text("/shared/seed.txt"))
attempt("fs.mkdir", lambda: client.fs.mkdir("/appdata/d/sub"))
attempt("fs.list", lambda: [i["name"] for i in client.fs.list("/appdata/d")])
attempt("fs.exists", lambda: client.fs.exists("/appdata/d/a.txt"))
attempt("fs.stat", lambda: client.fs.stat("/appdata/d/a.txt")["size"])
attempt("fs.delete", lambda: client.fs.delete("/appdata/d/sub"))
attempt("fs.direct", lambda: open("d/a.txt", encoding="utf-8").read())
attempt("registry.set", lambda: client.registry.set("k", {"v": [1, 2]}, ttl_seconds=60))
attempt("registry.get", lambda: client.registry.get("k"))
attempt("registry.list", lambda: client.registry.list("k"))
attempt("registry.delete", lambda: client.registry.delete("k"))
attempt("registry.gone", lambda: client.registry.get("k"))
attempt("ui.notify", lambda: client.ui.notify("hi", "there", "success") > 0)
attempt("ui.clipboard.set", lambda: client.ui.clipboard_set("copied"))
attempt("ui.clipboard.get", lambda: client.ui.clipboard_get())
attempt("permission.check", lambda: client.permissions.check("fs.write"))
attempt("permission.list", lambda: "admin" in client.permissions.list())
attempt("permission.request", lambda: client.permissions.request("fs.delete", "tidy up"))
attempt("ipc.subscribe", lambda: client.ipc.subscribe("mine"))
attempt("ipc.unsubscribe", lambda: client.ipc.unsubscribe("mine"))
attempt("ipc.send", lambda: client.ipc.send("allowed", {"to": "self"}, topic="t"))
attempt("ipc.receive", lambda: client.ipc.receive(2000))
attempt("ipc.receive.empty", lambda: client.ipc.receive(10))
attempt("ipc.send.absent", lambda: client.ipc.send("nobody-runs-this", 1))
attempt("ipc.broadcast", lambda: client.ipc.broadcast("news", "extra!"))
attempt("process.list", lambda: sorted(p["appId"] for p in client.process.list()))
attempt("process.info", lambda: client.process.info("allowed")["state"])
attempt("process.launch", lambda: client.process.launch("helper")["appId"])
attempt("process.terminate", lambda: client.process.terminate("helper")["state"])
client.log("info", "log notification works")
attempt("system.shutdown", lambda: client.call("system.shutdown"))
time.sleep(30)  # the shutdown stops us
"""

# Waits for the broadcast as long as a loaded machine may need to get the other apps
# through their calls (bounded), then for the shutdown that ends the test.
LISTENER = """
import time
client.ipc.subscribe("news")
client.ipc.receive(0)
report(ready=True)
deadline = time.monotonic() + 300
got = None
while got is None and time.monotonic() < deadline:
    got = client.ipc.receive(20000)
report(got=got)
client.shutdown_requested.wait(300)
"""

HELPER = """
client.shutdown_requested.wait(60)
"""


def test_every_method_allowed_and_denied(runtime: Runtime, tmp_path: Path) -> None:
    home = runtime.home
    shared = home / "vfs" / "shared"
    shared.mkdir(parents=True, exist_ok=True)
    (shared / "seed.txt").write_text("seed")
    runtime.install(write_app(tmp_path, "helper", HELPER))
    runtime.launch(write_app(tmp_path, "listener", LISTENER,
                             permissions=["ipc.receive", "system.info"]))
    wait_report(runtime, "listener", lambda r: r.get("ready"))

    # Denied: requests only ui.dialog, which no method needs, so it holds nothing else.
    denied = runtime.launch(write_app(tmp_path, "denied", GUARDED, permissions=["ui.dialog"]),
                            grant_all=True)
    assert denied.wait(60).reason is ExitReason.EXITED
    got = by_call(reports(runtime, "denied"))
    assert set(got) == set(NEEDS)
    for call, perm in NEEDS.items():
        assert (got[call]["ok"], got[call].get("code"), got[call].get("data")) == (
            False, -32001, {"permission": perm, "appId": "denied", "requested": False}), call
    # ... and nothing happened.
    assert not (home / "vfs" / "appdata" / "denied" / "denied.txt").exists()
    assert not (home / "vfs" / "appdata" / "denied" / "denied-dir").exists()
    assert (shared / "seed.txt").read_text() == "seed"
    assert not [n for n in runtime.notifications() if n["appId"] == "denied"]
    with sqlite3.connect(home / "kernel.db") as db:
        assert db.execute("SELECT COUNT(*) FROM registry").fetchone() == (0,)
    states = {a["appId"]: a["state"] for a in runtime.list()}
    assert states == {"listener": "running", "denied": "exited"}  # none launched or stopped
    free = {r["free"]: r["result"] for r in reports(runtime, "denied") if "free" in r}
    assert free == {"permission.request": {"granted": False,
                                           "reason": "not requested in the manifest"},
                    "permission.check": {"granted": False},
                    "permission.list": {"granted": ["ui.dialog"]}, "system.ping": True}

    allowed = runtime.launch(write_app(tmp_path, "allowed", ALLOWED, permissions=["full",
                                                                                  "admin"]),
                             grant_all=True)
    info = allowed.wait(90)
    assert info is not None and info.reason is ExitReason.STOPPED
    got = by_call(reports(runtime, "allowed"))
    expect: dict[str, Any] = {
        "system.ping": True, "system.time": True,
        "system.info": ["cpus", "memoryBytes", "node", "os", "version"],
        "fs.write": 6, "fs.write.append": 1, "fs.write.base64": 2, "fs.read": "héllo!",
        "fs.read.base64": [0, 255], "fs.read.shared": "seed", "fs.mkdir": True,
        "fs.list": ["a.txt", "sub"], "fs.exists": True, "fs.stat": 7, "fs.delete": True,
        "fs.direct": "héllo!", "registry.set": None, "registry.get": {"v": [1, 2]},
        "registry.list": ["k"], "registry.delete": None, "registry.gone": None,
        "ui.notify": True, "ui.clipboard.set": None, "ui.clipboard.get": "copied",
        "permission.check": True, "permission.list": True, "permission.request": True,
        "ipc.subscribe": None,
        "ipc.unsubscribe": None, "ipc.send": True,
        "ipc.receive": {"from": "allowed", "topic": "t", "message": {"to": "self"}},
        "ipc.receive.empty": None, "ipc.broadcast": 1,
        "process.list": ["allowed", "denied", "listener"], "process.info": "running",
        "process.launch": "helper", "process.terminate": "exited", "system.shutdown": {},
    }
    for call, value in expect.items():
        assert got[call]["ok"] and got[call]["result"] == value, (call, got[call])
    assert (got["fs.read.escape"]["ok"], got["fs.read.escape"]["code"]) == (False, -32001)
    assert (got["ipc.send.absent"]["ok"], got["ipc.send.absent"]["code"]) == (False, -32002)
    listener = wait_report(runtime, "listener", lambda r: "got" in r)
    assert listener["got"] == {"from": "allowed", "topic": "news", "message": "extra!"}
    logs = runtime.events(0, 0, "allowed")["events"]
    assert any(e.get("message") == "log notification works" for e in logs)
    assert all(a["exit"] is not None for a in runtime.list())  # system.shutdown stopped all


# Each send is a full round trip through the kernel actor: ~5 ms on a quiet machine,
# ~90 ms beside stress-ng in Ray mode, so the counts are chosen to fit the test's
# bounds there too. The flood fills the inbox by size (100 kB blobs), not by count.
ORDERED = 400

SENDER = f"ORDERED = {ORDERED}" + """
client.call("ipc.receive", {"timeoutMs": 0})
busy = 0
for i in range(ORDERED):
    while True:
        try:
            client.ipc.send("receiver", {"n": i})
            break
        except ApiError as exc:
            if exc.code != -32005:
                raise
            busy += 1
            time.sleep(0.005)
report(sent=ORDERED, busy=busy)
"""

# The first message comes only once the sender is launched (20 s and more on a loaded
# machine), so the receiver gives up on a deadline, not on one empty receive.
RECEIVER = f"ORDERED = {ORDERED}" + """
client.ipc.receive(0)
report(ready=True)
got = []
deadline = time.monotonic() + 240
while len(got) < ORDERED and time.monotonic() < deadline:
    msg = client.ipc.receive(30000)
    if msg is not None:
        got.append(msg["message"]["n"])
report(count=len(got), ordered=got == list(range(ORDERED)))
"""

SINK = """
client.ipc.receive(0)  # pulls from now on, and never again
report(ready=True)
client.shutdown_requested.wait(60)
"""

FLOOD = """
sent = busy = 0
blob = "z" * 100000
for i in range(300):
    try:
        client.ipc.send("sink", blob)
        sent += 1
    except ApiError as exc:
        if exc.code != -32005:
            raise
        busy += 1
report(sent=sent, busy=busy)
"""


@pytest.mark.timeout(900)  # two phases of hundreds of round trips each, on a loaded machine
def test_messages_arrive_in_order_and_a_full_inbox_is_bounded(runtime: Runtime,
                                                             tmp_path: Path) -> None:
    runtime.launch(write_app(tmp_path, "receiver", RECEIVER))
    wait_report(runtime, "receiver", lambda r: r.get("ready"))
    runtime.launch(write_app(tmp_path, "sender", SENDER))
    done = wait_report(runtime, "receiver", lambda r: "count" in r, timeout=270)
    assert done == {"count": ORDERED, "ordered": True}

    sink = runtime.launch(write_app(tmp_path, "sink", SINK))
    wait_report(runtime, "sink", lambda r: r.get("ready"))
    before = runtime.kernel.statistics()
    runtime.launch(write_app(tmp_path, "flood", FLOOD))
    flood = wait_report(runtime, "flood", lambda r: "sent" in r, timeout=240)
    after = runtime.kernel.statistics()
    assert flood["busy"] > 0 and flood["sent"] + flood["busy"] == 300
    assert after["ipc"]["bytes"] <= MAX_INBOX_BYTES
    assert flood["sent"] * 100000 <= MAX_INBOX_BYTES + 100064
    # 30 MB were offered; the kernel keeps at most the inbox cap (plus noise).
    assert after["rssBytes"] - before["rssBytes"] < MAX_INBOX_BYTES + 48 * 1024 * 1024
    sink.stop(2)
    assert runtime.kernel.statistics()["ipc"]["bytes"] == 0  # freed with the app


WRITER = """
events = []
client.on("system.event", events.append)
for i in range(2000):
    try:
        client.fs.write_text("/appdata/n.txt", str(i))
        report(i=i, ok=True)
    except ApiError as exc:
        report(i=i, ok=False, code=exc.code)
        break
    time.sleep(0.02)
for _ in range(100):
    if events:
        break
    time.sleep(0.05)
report(events=events, granted=client.permissions.list())
"""

CHECKER = """
report(granted=client.permissions.list())
"""


def test_revocation_counts_on_the_next_call_and_grants_persist(runtime: Runtime,
                                                             tmp_path: Path) -> None:
    home = runtime.home
    folder = write_app(tmp_path, "writer", WRITER,
                       permissions=["basic", "fs.write", "system.info"])
    handle = runtime.launch(folder, grants=["fs.write", "system.info"])
    wait_report(runtime, "writer", lambda r: r.get("ok") is True)
    cli(home, "permissions", "revoke", "writer", "fs.write")  # SQLite, not the kernel
    assert handle.wait(60).reason is ExitReason.EXITED
    reps = reports(runtime, "writer")
    writes = [r for r in reps if "i" in r]
    assert writes[-1]["ok"] is False and writes[-1]["code"] == -32001
    assert all(r["ok"] for r in writes[:-1])
    final = reps[-1]
    assert final["events"] == [{"name": "permission.revoked", "data": {"permission": "fs.write"}}]
    assert "fs.write" not in final["granted"]
    audit = [a["decision"] for a in runtime.kernel.audit("writer")
             if a["permission"] == "fs.write"]
    assert audit[0] == "granted" and "allowed" in audit and audit[-1] == "denied"
    assert "revoked" in audit

    mode_local = runtime.local
    runtime.shutdown()
    again = Runtime.start(local=mode_local, home=home)
    try:
        check = write_app(tmp_path, "writer", CHECKER,
                          permissions=["basic", "fs.write", "system.info"])
        assert again.launch(check).wait(60).reason is ExitReason.EXITED
        granted = reports(again, "writer")[-1]["granted"]
        assert "system.info" in granted and "fs.write" not in granted
    finally:
        again.shutdown()


QUOTA_WRITER = """
def write_and_delete():
    client.fs.write_bytes("/appdata/big.bin", b"x" * (3 * 1024 * 1024 // 2))
    return client.fs.delete("/appdata/big.bin")  # the next run starts at 0 bytes used
attempt("write", write_and_delete)
"""


def test_a_relaunch_gets_the_quota_and_the_requests_of_its_new_manifest(
        runtime: Runtime, tmp_path: Path) -> None:
    """The kernel skips telling the permissions and VFS actors what they already
    hold for an app; a changed manifest must still change both, either way."""
    def run(quota_mb: int, permissions: list[str]) -> dict[str, Any]:
        folder = write_app(tmp_path, "quota", QUOTA_WRITER, diskQuotaMb=quota_mb,
                           permissions=permissions)
        seen = len(reports(runtime, "quota"))
        assert runtime.launch(folder, grants=["fs.write", "fs.delete"]).wait(60).reason \
            is ExitReason.EXITED
        return reports(runtime, "quota")[seen:][-1]

    full = ["basic", "fs.write", "fs.delete"]
    assert run(1, full)["code"] == -32003  # 1.5 MB over 1 MB
    assert run(1, full)["code"] == -32003  # the same manifest again
    bigger = run(3, full)
    assert bigger["ok"] is True, bigger  # a larger quota counts at once
    assert run(1, full)["code"] == -32003  # and a smaller one again
    assert run(3, ["basic", "fs.delete"])["code"] == -32001  # fs.write no longer requested
    last = run(3, full)
    assert last["ok"] is True, last


OUTSIDE = """
import os, sys
sys.path.insert(0, {repo!r})
from sdk import EStarterClient
client = EStarterClient.connect()
print(client.fs.read_text("/appdata/note.txt"))
"""

IMPOSTOR = """
import os, sys
sys.path.insert(0, {repo!r})
from sdk import EStarterClient, ApiError
try:
    client = EStarterClient.connect()
    print("CONNECTED", client.fs.read_text("/appdata/note.txt"))
except ApiError as exc:
    print("REFUSED", exc.code)
except ValueError as exc:
    print("REFUSED", exc)
"""


def test_script_outside_estarter_uses_its_token(runtime: Runtime, tmp_path: Path) -> None:
    home = runtime.home
    runtime.install(write_app(tmp_path, "ide-tool", HELPER))
    notes = home / "vfs" / "appdata" / "ide-tool"
    notes.mkdir(parents=True, exist_ok=True)
    (notes / "note.txt").write_text("hello from outside")
    token = cli(home, "token", "ide-tool").strip()
    env = {"PATH": os.environ["PATH"], "ESTARTER_HOME": str(home)}
    ok = subprocess.run([sys.executable, "-c", OUTSIDE.format(repo=str(REPO))],
                        env={**env, "ESTARTER_TOKEN": token}, capture_output=True,
                        text=True, timeout=60)
    assert ok.stdout.strip() == "hello from outside", ok.stderr
    outputs = []
    for extra in ({"ESTARTER_APP_ID": "ide-tool"},
                  {"ESTARTER_APP_ID": "ide-tool", "ESTARTER_TOKEN": "est_forged"}):
        bad = subprocess.run([sys.executable, "-c", IMPOSTOR.format(repo=str(REPO))],
                             env={**env, **extra}, capture_output=True, text=True, timeout=60)
        outputs.append(bad.stdout)
        assert bad.stdout.startswith("REFUSED"), (bad.stdout, bad.stderr)
    assert "REFUSED -32001" in outputs[1]
