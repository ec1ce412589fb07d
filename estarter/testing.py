"""pytest plugin for app authors (registered as the ``pytest11`` entry point ``estarter``).

Fixtures (``pytest --fixtures`` lists them with these words):

- ``estarter_runtime``: a fresh :class:`~estarter.runtime.Runtime` with its own home;
  local mode (no Ray) unless the test is marked ``@pytest.mark.estarter_ray``.
- ``estarter_app``: installs an app folder with grants into that runtime and launches
  it (an :class:`~estarter.runtime.AppHandle`); stops what it launched at teardown.
- ``estarter_ray_session``: the one Ray of the whole pytest run, shared by every
  Ray-marked test (the caller's Ray if it is already initialised).
- ``estarter_home``: the test's own state folder.

Assertion helpers, each bounded by a timeout: :func:`wait_for_log`,
:func:`wait_for_notification`, :func:`assert_exit`; and :func:`install_app`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # the plugin loads in every pytest run: import the runtime lazily
    from estarter.hosting.base import ExitInfo, ExitReason
    from estarter.runtime import AppHandle, Runtime

__all__ = ["AppLauncher", "assert_exit", "install_app", "wait_for_log",
           "wait_for_notification"]

RAY_MARK = "estarter_ray"
DEFAULT_TIMEOUT = 60.0  # generous: a first launch on a loaded machine, Ray workers starting
STOP_GRACE = 3.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{RAY_MARK}: run the estarter_runtime fixture on Ray (one Ray per "
        "pytest run, shared by every test so marked)")


# -- fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def estarter_ray_session() -> Iterator[bool]:
    """The one Ray of this pytest run, shared by every ``estarter_ray`` test.

    Started once, when the first Ray test needs it (``ESTARTER_RAY_ADDRESS`` joins a
    cluster instead of an embedded local Ray), and shut down at the end of the run;
    if Ray is already initialised in this process (the caller's own Ray), that Ray
    is used and left running. Yields whether this plugin started it."""
    from estarter.runtime import shared_ray

    with shared_ray() as started:
        yield started


@pytest.fixture
def estarter_home(tmp_path: Path) -> Path:
    """The test's own ``ESTARTER_HOME`` (installed apps, grants, VFS, logs): a fresh
    folder under ``tmp_path``, so tests never see one another's state."""
    home = tmp_path / "estarter-home"
    home.mkdir(parents=True, exist_ok=True)
    return home


@pytest.fixture
def estarter_runtime(request: pytest.FixtureRequest, estarter_home: Path) -> Iterator[Runtime]:
    """A fresh :class:`estarter.runtime.Runtime` for this test, shut down after it
    (every app it started is stopped).

    Local mode (no Ray, everything in this process) by default. A test marked
    ``@pytest.mark.estarter_ray`` gets a runtime on the run's shared Ray
    (``estarter_ray_session``): its own kernel, VFS and permission actors and its
    own home, but no new Ray."""
    from estarter.runtime import Runtime

    on_ray = request.node.get_closest_marker(RAY_MARK) is not None
    if on_ray:
        request.getfixturevalue("estarter_ray_session")
    rt = Runtime.start(local=not on_ray, home=estarter_home)
    try:
        yield rt
    finally:
        rt.shutdown()


class AppLauncher:
    """What the ``estarter_app`` fixture gives: call it with an app folder (and the
    grants the test gives it) to install and launch the app; ``launched`` lists the
    handles, every one of them stopped at teardown."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.launched: list[AppHandle] = []

    def __call__(self, folder: str | Path, grants: list[str] | None = None,
                 grant_all: bool = False) -> AppHandle:
        app_id = install_app(self.runtime, folder, grants, grant_all)
        handle = self.runtime.launch(app_id)
        self.launched.append(handle)
        return handle

    def stop_all(self, grace: float = STOP_GRACE) -> None:
        """Stop every app launched here that still runs (ask, wait ``grace``, kill)."""
        from estarter.errors import EstarterError

        for handle in self.launched:
            try:
                if not handle.info().get("exit"):
                    handle.stop(grace)
            except EstarterError:
                pass  # ended and forgotten, or the runtime is already closed


@pytest.fixture
def estarter_app(estarter_runtime: Runtime) -> Iterator[AppLauncher]:
    """Install an app folder with grants and launch it:
    ``app = estarter_app("path/to/app", grants=["fs.write"])`` returns an
    :class:`estarter.runtime.AppHandle` on ``estarter_runtime`` (local, or Ray for a
    test marked ``estarter_ray``). Apps still running at teardown are stopped."""
    launcher = AppLauncher(estarter_runtime)
    try:
        yield launcher
    finally:
        launcher.stop_all()


# -- helpers --------------------------------------------------------------------------


def install_app(runtime: Runtime, folder: str | Path, grants: list[str] | None = None,
                grant_all: bool = False) -> str:
    """Install (or upgrade) the app in ``folder`` into ``runtime``'s home, granting
    ``grants`` (permission names or bundles) or, with ``grant_all``, every permission
    it requests; returns its app id. No prompt: a permission beyond ``basic`` that is
    not granted here stays ungranted."""
    return str(runtime.install(Path(folder), grants=list(grants or []),
                               grant_all=grant_all)["appId"])


def _run_events(app: AppHandle, timeout: float) -> Iterator[dict[str, Any]]:
    """The events of this run of ``app`` (from its ``launched`` event on), as they
    come, until ``timeout`` has passed; ends early after the run's exit event."""
    deadline = time.monotonic() + timeout
    run_id = app.record.get("runId")
    cursor, in_run = 0, run_id is None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        batch = app.runtime.events(cursor, min(left, 1.0), app.app_id)
        cursor = batch["next"]
        for event in batch["events"]:
            if event["event"] == "launched" and event.get("runId") == run_id:
                in_run = True
                continue
            if in_run:
                yield event
                if event["event"] == "exit":
                    return
        if not in_run and batch["missed"]:
            in_run = True  # the launched event fell out of the buffer: take what is left


def wait_for_log(app: AppHandle, pattern: str | re.Pattern[str],
                 timeout: float = DEFAULT_TIMEOUT) -> str:
    """The first log line of this run of ``app`` (stdout, stderr or the ``log`` call)
    that ``pattern`` matches (``re.search``); waits at most ``timeout`` seconds.
    Raises AssertionError, with the lines seen, on timeout or if the app ends first."""
    regex = re.compile(pattern)
    seen: list[str] = []
    ended = None
    for event in _run_events(app, timeout):
        if event["event"] == "log":
            if regex.search(event["message"]):
                return str(event["message"])
            seen.append(event["message"])
        elif event["event"] == "exit":
            ended = event
    why = (f"it exited ({ended['reason']}, code {ended['code']}) first" if ended
           else f"none within {timeout:g} s")
    raise AssertionError(f"{app.app_id}: no log line matches {regex.pattern!r}: {why}; "
                         f"last lines: {seen[-20:]}")


def wait_for_notification(app: AppHandle, title: str | re.Pattern[str] | None = None,
                          message: str | re.Pattern[str] | None = None,
                          timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """The first notification (``ui.notify``) of this run of ``app`` whose title and
    message match the given patterns (``re.search``; None matches anything), as a
    dict with ``title``, ``message``, ``level``. Waits at most ``timeout`` seconds;
    raises AssertionError, with those seen, on timeout or if the app ends first."""
    want_title = re.compile(title) if title is not None else None
    want_message = re.compile(message) if message is not None else None
    seen: list[tuple[str, str]] = []
    ended = None
    for event in _run_events(app, timeout):
        if event["event"] == "notification":
            if ((want_title is None or want_title.search(event["title"]))
                    and (want_message is None or want_message.search(event["message"]))):
                return {k: event[k] for k in ("title", "message", "level")}
            seen.append((event["title"], event["message"]))
        elif event["event"] == "exit":
            ended = event
    why = (f"it exited ({ended['reason']}, code {ended['code']}) first" if ended
           else f"none within {timeout:g} s")
    raise AssertionError(f"{app.app_id}: no notification matches title={title!r} "
                         f"message={message!r}: {why}; seen: {seen[-20:]}")


def assert_exit(app: AppHandle, reason: ExitReason | str | None = None,
                code: int | None = None, timeout: float = DEFAULT_TIMEOUT) -> ExitInfo:
    """Wait at most ``timeout`` seconds for ``app`` to end (restarts included) and
    check its exit ``reason`` (``"exited"``, ``"crashed"``, ``"timeout"``, ...) and
    ``code`` where given; returns the :class:`ExitInfo`. AssertionError otherwise,
    with the app's last log lines."""
    info = app.wait(timeout)
    if info is None:
        raise AssertionError(f"{app.app_id} did not exit within {timeout:g} s; "
                             f"last log lines: {app.runtime.logs(app.app_id, 20)}")
    got_reason = info.reason.value
    want_reason = getattr(reason, "value", reason)
    if (want_reason is not None and got_reason != want_reason) or (
            code is not None and info.code != code):
        raise AssertionError(
            f"{app.app_id} exited ({got_reason}, code {info.code}"
            f"{', ' + info.detail if info.detail else ''}), expected "
            f"({want_reason or 'any reason'}, code {'any' if code is None else code}); "
            f"last log lines: {app.runtime.logs(app.app_id, 20)}")
    return info
