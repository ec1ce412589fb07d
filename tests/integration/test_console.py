"""The web console against a real runtime (``estarter up`` in a subprocess, its own
Ray head): the JSON API and /metrics with the operator token, and a real headless
Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by selenium) that logs
in, launches and stops an app, answers a permission prompt, sees a hostile package
refused, and saves the screenshot README shows (docs/console.png)."""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from estarter.console.service import read_console
from tests.apps import wait_until, write_app
from tests.integration.test_cli_lifecycle import ROOT, estarter, ok_json

HOSTILE_NAME = "<script>alert('name')</script><b>Ticker</b>"
HOSTILE_LINE = "<img src=x onerror=alert('log')> tick"
SCREENSHOT = ROOT / "docs" / "console.png"

TICKER = f"""
import time
while True:
    client.call("log", {{"level": "info", "message": {HOSTILE_LINE!r}}})
    time.sleep(0.5)
"""
ASKER = """
import time
answer = client.call("permission.request", {"permission": "fs.write",
                                            "reason": "to save <b>notes</b>",
                                            "timeoutMs": 120000})
try:
    client.call("fs.write", {"path": "/appdata/note.txt", "text": "hi"})
    wrote = True
except ApiError:
    wrote = False
client.ui.notify("asker", json.dumps({"granted": answer["granted"], "wrote": wrote}))
while True:
    time.sleep(1)
"""
CALLER = """
for _ in range(100):
    client.call("system.ping")
try:
    client.call("fs.write", {"path": "/appdata/x.txt", "text": "no"})
except ApiError:
    pass
client.ui.notify("caller", "100 calls and one denial made")
hog = b"x" * (400 << 20)  # over memoryLimitMb: the OOM kill
"""


def write_apps(root: Path) -> list[Path]:
    return [
        write_app(root, "ticker", TICKER, name=HOSTILE_NAME, version="1.0.0"),
        write_app(root, "asker", ASKER, name="Asker", version="1.0.0",
                  permissions=["fs.write", "ui.notification"]),
        write_app(root, "caller", CALLER, name="Caller", version="1.0.0",
                  memoryLimitMb=96),
    ]


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A runtime up with its console and three installed apps; down after, and the
    console process gone with it."""
    base = tmp_path_factory.mktemp("console")
    home = base / "home"
    for folder in write_apps(base / "apps"):
        proc = estarter(home, "install", str(folder))
        assert proc.returncode == 0, proc.stderr
    pid = None
    try:
        up = ok_json(home, "up")
        assert up["console"]["url"].startswith("http://127.0.0.1:"), up
        token = (home / "run" / "operator-token").read_text().strip()
        assert (home / "run" / "operator-token").stat().st_mode & 0o777 == 0o600
        pid = (read_console(home) or {}).get("pid")
        yield {"home": home, "url": up["console"]["url"], "token": token, "base": base}
    finally:
        down = estarter(home, "down", "--json")
        assert down.returncode == 0, down.stderr
        if pid is not None:
            import psutil

            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


def api(console: dict[str, Any]) -> httpx.Client:
    return httpx.Client(base_url=console["url"], timeout=60,
                        headers={"Authorization": f"Bearer {console['token']}"})


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("estarter_")
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_move_after_calls_a_denial_and_an_oom_kill(console: dict[str, Any]) -> None:
    with api(console) as http:
        assert httpx.get(console["url"] + "metrics").status_code == 401
        assert http.post("/api/apps/caller/launch").status_code == 200

        def oom_seen() -> bool:
            s = samples(http.get("/metrics").text)
            return s.get(("estarter_app_oom_kills_total", (("app", "caller"),)), 0) >= 1

        assert wait_until(oom_seen, 120, interval=0.5)
        s = samples(http.get("/metrics").text)
        key = (("app", "caller"), ("method", "system.ping"), ("outcome", "ok"))
        assert s[("estarter_api_calls_total", key)] >= 100
        denied = (("app", "caller"), ("method", "fs.write"), ("outcome", "denied"))
        assert s[("estarter_api_calls_total", denied)] == 1
        assert s[("estarter_permission_denials_total", (("app", "caller"),))] == 1
        assert s[("estarter_app_exits_total", (("app", "caller"), ("reason", "memory_limit")))] \
            == 1
        assert s[("estarter_api_call_duration_seconds_count", (("app", "caller"),))] >= 101
        rows = {r["appId"]: r for r in http.get("/api/apps").json()}
        assert rows["caller"]["exit"]["reason"] == "memory_limit"
        assert rows["ticker"]["name"] == HOSTILE_NAME  # data, escaped by the page


# -- the real browser ---------------------------------------------------------------

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture
def browser() -> Iterator[Any]:
    if CHROMIUM is None or not Path(CHROMEDRIVER).exists():
        pytest.skip("Debian's chromium and chromium-driver are not installed (make setup)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="estarter-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", f"--user-data-dir={profile}", "--window-size=1500,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_a_browser_shows_why_a_lost_nodes_log_has_no_lines(browser: Any,
                                                           tmp_path: Path) -> None:
    """The app page of an app whose last run's node is gone shows the kernel's note
    (as text), not an empty log. A fake backend: losing a node needs a cluster."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.console_fakes import TOKEN, FakeBackend, served

    backend = FakeBackend(tmp_path / "home")
    backend.home.mkdir()
    backend.add_app("far", "Far", state="exited")
    note = f"the last run's log of far was on node {HOSTILE_LINE}, which is gone: lost"
    backend.log_notes["far"] = note
    with served(backend) as url:
        wait = WebDriverWait(browser, 60, poll_frequency=0.2)
        browser.get(url + "/login")
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        browser.find_element(By.ID, "login").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, 'tr[data-app="far"]'))
        browser.get(url + "/app/far")
        shown = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#log .note"))
        assert shown[0].text == note  # as text: the hostile part did not become markup
        assert not browser.find_elements(By.CSS_SELECTOR, "#log img")


def hostile_zip(folder: Path) -> Path:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("manifest.json", json.dumps({"id": "sneaky", "runtime": "python",
                                                 "entry": "app.py"}))
        zf.writestr("app.py", "")
        zf.writestr(zipfile.ZipInfo("../../escaped.txt"), "owned")
    path = folder / "sneaky.app.zip"
    path.write_bytes(buf.getvalue())
    return path


def test_a_browser_logs_in_stops_an_app_answers_a_prompt_and_sees_hostile_text_as_text(
        console: dict[str, Any], browser: Any) -> None:
    from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 90, poll_frequency=0.2,
                         ignored_exceptions=(StaleElementReferenceException,))
    url = console["url"]
    browser.get(url)
    assert "/login" in browser.current_url  # no session yet
    browser.find_element(By.ID, "token").send_keys(console["token"])
    browser.find_element(By.ID, "login").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, 'tr[data-app="ticker"]'))
    assert console["token"] not in browser.current_url

    def state(app: str) -> str:
        cells = browser.find_elements(By.CSS_SELECTOR, f'tr[data-app="{app}"] td.state')
        return cells[0].text if cells else ""

    def click_on(selector: str) -> None:
        """Click, finding the element again if a live update replaced it meanwhile (the
        wait ignores StaleElementReferenceException and tries again)."""
        def attempt(d: Any) -> bool:
            d.find_element(By.CSS_SELECTOR, selector).click()
            return True

        wait.until(attempt)

    def click(app: str, action: str) -> None:
        click_on(f'tr[data-app="{app}"] .act-{action}')

    # The hostile name is shown as text, and nothing of it ran.
    name = wait.until(lambda d: d.find_element(
        By.CSS_SELECTOR, 'tr[data-app="ticker"] td.name').text)
    assert name == HOSTILE_NAME

    click("ticker", "launch")
    wait.until(lambda d: state("ticker") == "running")
    click("asker", "launch")
    prompt = 'li[data-app="asker"][data-permission="fs.write"] .prompt-grant'
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, prompt))
    # Looked at by the test's author; README's picture when asked for (so a test
    # run leaves the tree clean): ESTARTER_UPDATE_SCREENSHOT=1.
    browser.get_screenshot_as_file(str(console["base"] / "apps-page.png"))
    if os.environ.get("ESTARTER_UPDATE_SCREENSHOT"):
        browser.get_screenshot_as_file(str(SCREENSHOT))
    click_on(prompt)
    wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, prompt))

    with api(console) as http:
        def asker_answered() -> list[dict[str, Any]]:
            return [n for n in http.get("/api/notifications").json() if n["appId"] == "asker"]

        assert wait_until(asker_answered, 60, interval=0.2)
        assert json.loads(asker_answered()[-1]["message"]) == {"granted": True, "wrote": True}
    wait.until(lambda d: "asker" in d.find_element(By.ID, "notes").text)

    click("ticker", "stop")
    wait.until(lambda d: state("ticker") in ("exited", "stopped"))

    # The app page: its log, hostile lines as text, with timestamps and streams.
    browser.get(url + "app/ticker")
    wait.until(lambda d: HOSTILE_LINE in d.find_element(By.ID, "log").text)
    browser.get_screenshot_as_file(str(console["base"] / "app-page.png"))

    # A hostile package is refused with its reason, and nothing is installed.
    browser.get(url)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, 'tr[data-app="ticker"]'))
    browser.find_element(By.ID, "install-file").send_keys(str(hostile_zip(console["base"])))
    browser.find_element(By.ID, "install-button").click()
    wait.until(lambda d: "refused" in d.find_element(By.ID, "message").text)
    assert not browser.find_elements(By.CSS_SELECTOR, 'tr[data-app="sneaky"]')
    assert not (console["home"] / "apps" / "sneaky").exists()
    assert not (console["home"].parent / "escaped.txt").exists()

    try:
        alert = browser.switch_to.alert.text
    except NoAlertPresentException:
        alert = None
    assert alert is None  # no app text ever ran as script
