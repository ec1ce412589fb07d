"""The permission lifecycle around the PermissionManager: ``permission.request``
waits for the operator, and running apps hear about grants and revocations.

Enforcement needs none of this (every check reads the current grants); this module
only answers requests and sends the ``system.event`` notifications
``permission.granted`` / ``permission.revoked``, from one watcher thread that
notices changes made by any process (the CLI writes SQLite directly).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from .. import permissions as names
from ..errors import Busy, InvalidParams
from .permissions import PermissionManager
from .router import opt, req

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_SECONDS = 60.0
MAX_OPEN_REQUESTS = 32
WATCH_SECONDS = 0.1
AUDIT_FLUSH_SECONDS = 1.0

Push = Callable[[str, str, Any], bool]


class PermissionLifecycle:
    def __init__(self, permissions: PermissionManager, push: Push,
                 running: Callable[[], list[str]], *,
                 request_timeout: float = REQUEST_TIMEOUT_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.permissions = permissions
        self.request_timeout = request_timeout
        self._push = push
        self._running = running
        self._clock = clock
        self._lock = threading.Lock()
        self._known: dict[str, frozenset[str]] = {}
        self._open = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the watcher. Idempotent; restartable after ``close``."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._watch, daemon=True,
                                            name="estarter-permission-watch")
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(5)

    def request(self, app_id: str, params: dict[str, Any]) -> dict[str, Any]:
        """``permission.request``: wait for the operator, up to the timeout (the app
        may ask for a shorter one with ``timeoutMs``); no answer counts as denied."""
        name = req(params, "permission")
        reason = opt(params, "reason", str, "")[:500]
        timeout = opt(params, "timeoutMs", int, None)
        try:
            perms = names.normalize(name)
        except ValueError:
            raise InvalidParams(f"unknown permission {name!r}", {"permission": name}) from None
        if len(perms) != 1:
            raise InvalidParams("request one permission, not a bundle", {"permission": name})
        (perm,) = perms
        wait = self.request_timeout if timeout is None else \
            max(0.0, min(timeout / 1000.0, self.request_timeout))
        pm = self.permissions
        if perm in pm.granted(app_id):
            return {"granted": True}
        if perm not in pm.requested(app_id):
            # An app never holds what its manifest did not request: nobody is asked.
            pm.record(app_id, perm, "permission.request", "denied")
            return {"granted": False, "reason": "not requested in the manifest"}
        with self._lock:
            if self._open >= MAX_OPEN_REQUESTS:
                raise Busy("too many permission requests are waiting")
            self._open += 1
        rid = pm.open_request(app_id, perm, reason)
        try:
            deadline = self._clock() + wait
            granted = False
            while True:
                if perm in pm.granted(app_id):
                    granted = True
                    break
                if pm.request_decision(rid) == "denied" or self._clock() >= deadline:
                    break
                self._stop.wait(min(WATCH_SECONDS, max(0.0, deadline - self._clock())))
        finally:
            pm.close_request(rid)
            with self._lock:
                self._open -= 1
        pm.record(app_id, perm, "permission.request", "allowed" if granted else "denied")
        return {"granted": granted}

    def seed(self, app_id: str) -> None:
        """Remember what a starting app holds, to tell it about changes later."""
        granted = self.permissions.granted(app_id)
        with self._lock:
            self._known[app_id] = granted

    def forget(self, app_id: str) -> None:
        with self._lock:
            self._known.pop(app_id, None)

    def check_changes(self) -> None:
        """One watcher step: tell running apps what was granted or revoked."""
        self.permissions.refresh()
        for app_id in self._running():
            now = self.permissions.granted(app_id)
            with self._lock:
                before = self._known.get(app_id)
                self._known[app_id] = now
            if before is None or before == now:
                continue
            for perm in sorted(now - before):
                self._push(app_id, "system.event",
                           {"name": "permission.granted", "data": {"permission": perm}})
            for perm in sorted(before - now):
                self._push(app_id, "system.event",
                           {"name": "permission.revoked", "data": {"permission": perm}})

    def _watch(self) -> None:
        flushed = self._clock()
        while not self._stop.wait(WATCH_SECONDS):
            try:
                self.check_changes()
                if self._clock() - flushed >= AUDIT_FLUSH_SECONDS:
                    # So `estarter permissions audit` in another process sees recent rows.
                    self.permissions.flush()
                    flushed = self._clock()
            except Exception as exc:  # a closed database at shutdown, a locked one: next step
                if self._stop.is_set():
                    return
                log.warning("permission watcher step failed: %s", exc)
