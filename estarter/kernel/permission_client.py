"""The permission manager as its other actors see it: decisions from a read-only
snapshot of the authority's committed state, every change through the authority.

The permissions actor (``actors/permissions.py``) owns grants, requests, revocations
and the audit log; it is the one writer. The kernel and the VFS service check an
app's calls against a ``PermissionClient``: its checks read the same SQLite file
(on the same node) and begin, like the authority's own, with ``PRAGMA data_version``,
which changes exactly when another connection committed. A grant or revocation is
committed before the authority answers, so it counts on the app's very next call
with no message to the checkers and no polling interval, at a few microseconds a
check instead of an actor hop (~0.9 ms here) per call.

Audit rows of checks are buffered here and shipped to the authority in batches
(``send_audit``, fire and forget); a checker that dies loses at most its last
second of allowed/denied rows, as the single-process manager always could.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .permissions import PermissionManager

log = logging.getLogger(__name__)

AuditRow = tuple[float, str, str, str, str]  # time, app, permission, method, decision
# Allowed checks, aggregated: app, permission, last method, count, first time, last time.
AllowedRow = tuple[str, str, str, int, float, float]
SendAudit = Callable[[list[AuditRow], list[AllowedRow]], None]


class PermissionClient(PermissionManager):
    """``authority`` has PermissionManager's methods (the permissions actor through
    a synchronous proxy, or a PermissionManager itself); ``send_audit(rows)`` must
    not block for long."""

    def __init__(self, db_path: Path, authority: Any,
                 send_audit: SendAudit | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.authority = authority
        self._send_audit = send_audit or authority.append_audit
        super().__init__(db_path, clock)

    # -- reads that must see the authority's latest commit --------------------

    def requested(self, app_id: str) -> frozenset[str]:
        with self._lock:
            self._refresh_locked()
            return self._requested.get(app_id, frozenset())

    # -- changes: the authority's -----------------------------------------------

    def register(self, app_id: str, requested: Iterable[str]) -> None:
        """Through the authority, unless its last commit already holds exactly this
        set: a relaunch with the same manifest (the usual case) then costs a
        snapshot read here instead of an actor call and a write transaction, with
        the same outcome (register only replaces the requested set)."""
        wanted = frozenset(requested)
        if self.requested(app_id) == wanted:
            return
        self.authority.register(app_id, sorted(wanted))

    def grant(self, app_id: str, perms: Iterable[str], by: str = "operator") -> frozenset[str]:
        return frozenset(self.authority.grant(app_id, list(perms), by))

    def revoke(self, app_id: str, perms: Iterable[str], by: str = "operator") -> frozenset[str]:
        return frozenset(self.authority.revoke(app_id, list(perms), by))

    def forget(self, app_id: str) -> None:
        self.authority.forget(app_id)

    def grants(self, app_id: str) -> dict[str, str]:
        return dict(self.authority.grants(app_id))

    def audit(self, app_id: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        self.flush_sync()  # the answer includes this checker's decisions
        return list(self.authority.audit(app_id, limit))

    def open_request(self, app_id: str, permission: str, reason: str) -> int:
        return int(self.authority.open_request(app_id, permission, reason))

    def request_decision(self, request_id: int) -> str | None:
        with self._lock:  # a read: from the snapshot, as often as the waiter polls
            row = self._db.execute("SELECT decision FROM pending WHERE id=?",
                                   (request_id,)).fetchone()
        return None if row is None else row[0]

    def close_request(self, request_id: int) -> None:
        self.authority.close_request(request_id)

    def clear_requests(self) -> None:
        self.authority.clear_requests()

    def deny(self, app_id: str, perms: Iterable[str] | None = None,
             by: str = "operator") -> int:
        return int(self.authority.deny(app_id, None if perms is None else list(perms), by))

    def flush_sync(self) -> None:
        """Ship the buffered audit and wait until the authority has it."""
        with self._lock:
            rows, allowed = self._take_audit()
        if rows or allowed:
            self.authority.append_audit(rows, allowed)

    def _take_audit(self) -> tuple[list[AuditRow], list[AllowedRow]]:
        self._unflushed = 0
        rows, self._audit = self._audit, []
        allowed, self._allowed = self._allowed, {}
        return rows, [(app, perm, method, count, first, last)
                      for (app, perm), (count, first, last, method) in allowed.items()]

    def _flush_audit(self) -> None:
        rows, allowed = self._take_audit()
        if not rows and not allowed:
            return
        try:
            self._send_audit(rows, allowed)
        except Exception as exc:  # the authority restarting: these rows are lost
            log.warning("audit rows not delivered (%d): %s", len(rows) + len(allowed), exc)
