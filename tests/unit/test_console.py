"""The web console's API without Ray: a fake backend, Starlette's TestClient, and a
real uvicorn for the server-sent events. Auth, CSRF, hostile app text, hostile
uploads, /metrics."""

from __future__ import annotations

import io
import json
import os
import stat
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from estarter.console.auth import ensure_token
from estarter.console.service import stop as stop_console
from estarter.errors import PermissionDenied
from estarter.metrics import AppMetrics, outcome_of, process_usage
from tests.console_fakes import METRICS_TOKEN, TOKEN, FakeBackend, make_console, served

BASE = "http://127.0.0.1:8470"
ORIGIN = {"Origin": BASE}
BEARER = {"Authorization": f"Bearer {TOKEN}"}
HOSTILE = "<script>alert('x')</script><img src=x onerror=alert(1)>"


@pytest.fixture
def backend(tmp_path: Path) -> FakeBackend:
    fake = FakeBackend(tmp_path / "home")
    fake.home.mkdir()
    fake.add_app("hello", "Hello")
    return fake


@pytest.fixture
def client(backend: FakeBackend) -> Iterator[TestClient]:
    with TestClient(make_console(backend), base_url=BASE, follow_redirects=False) as c:
        yield c


def login(client: TestClient) -> str:
    """Log in as a browser does; returns the session's CSRF token."""
    resp = client.post("/login", data={"token": TOKEN}, headers=ORIGIN)
    assert resp.status_code == 303 and resp.headers["location"] == "/"
    return str(client.get("/api/session").json()["csrf"])


# -- who may ask ---------------------------------------------------------------------


def test_the_api_refuses_a_request_without_the_operator_token(client: TestClient) -> None:
    assert client.get("/api/apps").status_code == 401
    assert client.get("/api/apps", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.post("/api/apps/hello/launch").status_code == 401
    assert client.get("/metrics").status_code == 401
    assert client.get("/").status_code == 303  # the page sends the browser to /login
    ok = client.get("/api/apps", headers=BEARER)
    assert ok.status_code == 200 and ok.json()[0]["appId"] == "hello"


def test_the_metrics_token_opens_metrics_and_nothing_else(client: TestClient) -> None:
    metrics = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    assert client.get("/metrics", headers=metrics).status_code == 200
    assert client.get("/api/apps", headers=metrics).status_code == 401
    assert client.post("/api/apps/hello/launch", headers=metrics).status_code == 401


def test_login_sets_a_strict_httponly_session_cookie_without_the_token(
        client: TestClient) -> None:
    bad = client.post("/login", data={"token": "nope"}, headers=ORIGIN)
    assert bad.status_code == 303 and bad.headers["location"] == "/login?failed=1"
    assert "set-cookie" not in bad.headers
    good = client.post("/login", data={"token": TOKEN}, headers=ORIGIN)
    cookie = good.headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    assert TOKEN not in cookie
    assert client.get("/api/apps").status_code == 200  # the cookie is enough to read


def test_a_cross_origin_login_is_refused(client: TestClient) -> None:
    resp = client.post("/login", data={"token": TOKEN}, headers={"Origin": "http://evil.test"})
    assert resp.status_code == 403 and "set-cookie" not in resp.headers


def test_state_changes_need_the_csrf_token_and_the_same_origin(
        client: TestClient, backend: FakeBackend) -> None:
    csrf = login(client)
    assert client.post("/api/apps/hello/launch", headers=ORIGIN).status_code == 403
    assert client.post("/api/apps/hello/launch",
                       headers={"X-Estarter-CSRF": "forged", **ORIGIN}).status_code == 403
    cross = client.post("/api/apps/hello/launch",
                        headers={"X-Estarter-CSRF": csrf, "Origin": "http://evil.test"})
    assert cross.status_code == 403
    site = client.post("/api/apps/hello/launch",
                       headers={"X-Estarter-CSRF": csrf, "Sec-Fetch-Site": "cross-site"})
    assert site.status_code == 403
    assert backend.actions == []  # nothing happened
    assert client.get("/api/apps/hello/launch").status_code == 405  # never a GET
    ok = client.post("/api/apps/hello/launch", headers={"X-Estarter-CSRF": csrf, **ORIGIN})
    assert ok.status_code == 200 and backend.actions == [("launch", "hello")]


def test_a_bearer_caller_needs_no_csrf_token_but_a_cross_origin_one_is_refused(
        client: TestClient, backend: FakeBackend) -> None:
    assert client.post("/api/apps/hello/stop", headers=BEARER).status_code == 200
    evil = client.post("/api/apps/hello/stop", headers={**BEARER, "Origin": "http://evil.test"})
    assert evil.status_code == 403
    assert backend.actions == [("stop", "hello")]


def test_a_rebound_host_name_gets_nothing(client: TestClient) -> None:
    resp = client.get("/api/apps", headers={**BEARER, "Host": "evil.test:8470"})
    assert resp.status_code == 403


def test_tokens_are_0600_and_made_once(tmp_path: Path) -> None:
    path = ensure_token(tmp_path)
    first = path.read_text()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and len(first) >= 32
    assert ensure_token(tmp_path).read_text() == first
    assert not stop_console(tmp_path)  # no console recorded: nothing to stop


# -- hostile app text ------------------------------------------------------------------


def test_hostile_app_text_goes_out_as_json_under_a_strict_csp(
        client: TestClient, backend: FakeBackend) -> None:
    backend.add_app("evil", HOSTILE)
    backend.log_lines["evil"] = [HOSTILE]
    backend.notes.append({"id": 1, "appId": "evil", "title": HOSTILE, "message": HOSTILE,
                          "level": "info", "time": 0})
    for path in ("/api/apps", "/api/apps/evil/logs", "/api/notifications"):
        resp = client.get(path, headers=BEARER)
        assert resp.headers["content-type"].startswith("application/json")
        assert HOSTILE in json.dumps(resp.json())
    page = client.get("/", headers=BEARER)
    assert page.headers["content-type"].startswith("text/html")
    assert "<script>alert" not in page.text  # no app text is ever in a page
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"


def test_logs_of_a_lost_node_come_with_their_note(
        client: TestClient, backend: FakeBackend) -> None:
    backend.log_lines["hello"] = ["one", "two"]
    assert client.get("/api/apps/hello/logs?lines=1", headers=BEARER).json() == {
        "lines": ["two"]}
    backend.log_notes["hello"] = "the last run's log of hello was on node w-1: lost"
    got = client.get("/api/apps/hello/logs", headers=BEARER).json()
    assert got["note"] == backend.log_notes["hello"]


def test_the_page_script_never_parses_app_text_as_html() -> None:
    from estarter.console.api import static_dir

    for name in ("console.js", "login.js"):
        source = (static_dir() / name).read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write",
                     "eval(", "new Function"):
            assert sink not in source, (name, sink)


# -- uploads -------------------------------------------------------------------------


def zip_of(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return buf.getvalue()


MANIFEST = json.dumps({"id": "uploaded", "name": "Uploaded", "version": "1.0.0",
                       "runtime": "python", "entry": "app.py"}).encode()


def upload(client: TestClient, data: bytes, name: str = "x.app.zip") -> Any:
    return client.post("/api/install", headers=BEARER,
                       files={"package": (name, data, "application/zip")})


def test_a_hostile_upload_is_refused_with_its_reason_and_nothing_lands(
        client: TestClient, backend: FakeBackend) -> None:
    before = sorted(p.relative_to(backend.home) for p in backend.home.rglob("*"))
    slip = zip_of({"manifest.json": MANIFEST, "app.py": b"", "../evil.txt": b"owned"})
    resp = upload(client, slip)
    assert resp.status_code == 400
    assert resp.json()["error"].startswith("refused") and "leaves" in resp.json()["error"]
    assert "estarter-upload-" not in resp.json()["error"]  # no path of ours in it
    assert upload(client, b"not a zip at all").status_code == 400
    assert upload(client, zip_of({"app.py": b""})).status_code == 400  # no manifest
    assert upload(client, slip, "evil.exe").status_code == 400
    after = sorted(p.relative_to(backend.home) for p in backend.home.rglob("*")
                   if not p.name.endswith(".lock"))
    assert [p for p in after if "uploaded" in str(p)] == []
    assert "uploaded" not in backend.rows and not (backend.home.parent / "evil.txt").exists()
    assert len(after) <= len(before) + 8  # at most the store's empty folders and databases


def test_a_good_upload_installs_through_the_same_checks(
        client: TestClient, backend: FakeBackend) -> None:
    resp = upload(client, zip_of({"manifest.json": MANIFEST, "app.py": b"print(1)\n"}),
                  "good.eapp")
    assert resp.status_code == 200, resp.text
    assert resp.json()["appId"] == "uploaded" and "uploaded" in backend.rows


# -- permissions ------------------------------------------------------------------------


def test_grant_deny_and_revoke_name_one_permission(
        client: TestClient, backend: FakeBackend) -> None:
    backend.pending_rows.append({"id": 1, "appId": "hello", "permission": "fs.write",
                                 "reason": HOSTILE, "createdAt": 0})
    assert client.get("/api/pending", headers=BEARER).json()[0]["reason"] == HOSTILE
    url = "/api/apps/hello/permissions/{}/{}"
    assert client.post(url.format("fs.write", "grant"), headers=BEARER).json() == {
        "granted": ["fs.write"]}
    assert client.post(url.format("fs.write", "revoke"), headers=BEARER).status_code == 200
    assert client.post(url.format("full", "grant"), headers=BEARER).status_code == 400
    assert client.post(url.format("nope", "grant"), headers=BEARER).status_code == 400
    assert client.post(url.format("fs.write", "explode"), headers=BEARER).status_code == 404
    assert client.post(url.format("fs.write", "deny"), headers=BEARER).json() == {"denied": 0}
    assert client.post("/api/apps/..%2Fx/launch", headers=BEARER).status_code == 404


# -- metrics -------------------------------------------------------------------------------


def test_metrics_parse_and_carry_the_app_label(client: TestClient, backend: FakeBackend) -> None:
    m = AppMetrics()
    for _ in range(100):
        m.call_done("system.ping", "ok", 0.001)
    m.call_done("fs.write", outcome_of(PermissionDenied("no")), 0.002)
    m.call_done("made.up.method", "error", 0.002)
    m.exited("memory_limit")
    backend.add_app("busy", state="running", pid=1234, cpuSeconds=1.5, memoryBytes=4096,
                    restarts=2, droppedLogLines=7, metrics=m.snapshot())
    backend.add_app("bad\"app", HOSTILE)
    backend.pending_rows.append({"id": 1, "appId": "busy", "permission": "fs.write",
                                 "reason": "", "createdAt": 0})
    resp = client.get("/metrics", headers=BEARER)
    assert resp.headers["content-type"].startswith("text/plain")
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(resp.text):
        assert family.name.startswith("estarter_")
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("estarter_api_calls_total", app="busy", method="system.ping",
                 outcome="ok") == 100
    assert value("estarter_api_calls_total", app="busy", method="fs.write",
                 outcome="denied") == 1
    assert value("estarter_api_calls_total", app="busy", method="other", outcome="error") == 1
    assert value("estarter_permission_denials_total", app="busy") == 1
    assert value("estarter_app_oom_kills_total", app="busy") == 1
    assert value("estarter_app_exits_total", app="busy", reason="memory_limit") == 1
    assert value("estarter_app_restarts_total", app="busy") == 2
    assert value("estarter_app_cpu_seconds_total", app="busy") == 1.5
    assert value("estarter_app_memory_bytes", app="busy") == 4096
    assert value("estarter_app_log_lines_dropped_total", app="busy") == 7
    assert value("estarter_app_state", app="busy", state="running") == 1
    assert value("estarter_api_call_duration_seconds_count", app="busy") == 102
    assert value("estarter_api_call_duration_seconds_bucket", app="busy", le="0.001") == 100
    assert value("estarter_permission_requests_pending", app="busy") == 1
    assert value("estarter_app_state", app="bad\"app", state="installed") == 1  # escaped


def test_app_metrics_count_outcomes_and_bound_the_labels() -> None:
    m = AppMetrics()
    m.call_done("system.ping", "ok", 0.0001)
    m.call_done(12345, "error", 100.0)  # not even a string: "other", the +Inf bucket
    snap = m.snapshot()
    assert {(c["method"], c["outcome"]) for c in snap["calls"]} == {
        ("system.ping", "ok"), ("other", "error")}
    assert snap["latency"]["counts"][0] == 1 and snap["latency"]["counts"][-1] == 1
    assert outcome_of(None) == "ok" and outcome_of(ValueError()) == "error"
    usage = process_usage(os.getpid())
    assert usage["cpuSeconds"] > 0 and usage["memoryBytes"] > 0
    assert process_usage(None) == {"cpuSeconds": 0.0, "memoryBytes": 0}


# -- live updates (a real server: SSE streams) ---------------------------------------------


def read_events(resp: httpx.Response, seconds: float = 60.0) -> Iterator[dict[str, Any]]:
    """The stream's items, for at most ``seconds`` (a test that waits for an item
    that never comes ends with StopIteration, not a hang)."""
    deadline = time.monotonic() + seconds
    for line in resp.iter_lines():
        if time.monotonic() > deadline:
            return
        if line.startswith("data: "):
            yield json.loads(line[6:])


def test_state_changes_pending_requests_and_logs_arrive_over_sse(backend: FakeBackend) -> None:
    backend.add_app("evil", HOSTILE)
    with served(backend) as url, httpx.Client(
            base_url=url, headers=BEARER, timeout=httpx.Timeout(30.0)) as http, http.stream(
            "GET", "/api/events?app=hello") as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = read_events(resp)
        first = next(e for e in events if e["kind"] == "apps")
        assert {r["appId"]: r["state"] for r in first["apps"]}["hello"] == "installed"
        assert http.post("/api/apps/hello/launch").status_code == 200
        assert any(e["kind"] == "apps" and any(
            r["appId"] == "hello" and r["state"] == "running" for r in e["apps"])
            for e in events)
        backend.pending_rows.append({"id": 9, "appId": "hello", "permission": "fs.write",
                                     "reason": "", "createdAt": 0})
        pending = next(e for e in events if e["kind"] == "pending" and e["pending"])
        assert pending["pending"][0]["permission"] == "fs.write"
        backend.emit("log", "evil", level="info", message="not yours")
        backend.emit("log", "hello", level="info", message=HOSTILE)
        line = next(e for e in events if e["kind"] == "log")
        assert line["appId"] == "hello" and line["message"] == HOSTILE
