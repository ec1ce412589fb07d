"""The operator's consent at ``run``: what the app requests and does not hold, a y/N
question per permission on a terminal (never without one, never with ``--json``),
and what stays ungranted with the command that grants it."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import permissions as names
from .cli_apps import err, out, say_ungranted
from .errors import EstarterError

Ask = Callable[[str], bool]


def ask_terminal(question: str) -> bool:
    """One y/N question on the terminal; anything but y/yes (or EOF) is no."""
    err.print(question, end="", markup=False)
    try:
        answer = input()
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def consent(home: Path, ref: str, grants: list[str], grant_all: bool,
            ask: Ask | None) -> tuple[list[str], dict[str, Any] | None]:
    """The grants to launch ``ref`` with, and the report of what stays ungranted.

    With ``ask`` (a terminal, no ``--json``), each requested permission the app does
    not hold and ``--grant`` does not give is asked about; a yes joins the grants
    (which persist, as ``--grant`` does). The report is None when the app cannot be
    read here: the launch then says why."""
    from . import devices
    from .kernel.permissions import PermissionManager
    from .paths import state_db
    from .store import AppStore

    try:
        manifest, _ = AppStore(home).resolve(ref)
    except EstarterError:
        return grants, None
    requested = manifest.requested_permissions
    grantable, refused = devices.split(requested)  # no device here: not asked, reported
    if grant_all:
        return grants, {"appId": manifest.id,
                        **names.ungranted_report(manifest.id, requested, grantable, refused)}
    pm = PermissionManager(state_db(home))
    try:
        held = set(names.effective(requested, pm.grants(manifest.id)))
    finally:
        pm.close()
    for name in grants:
        held |= names.normalize(name) & requested
    grants = list(grants)
    if ask is not None:
        for perm in sorted(grantable - held):
            if ask(f"{manifest.id} requests the permission {perm}. Grant it? [y/N] "):
                grants.append(perm)
                held.add(perm)
    return grants, {"appId": manifest.id,
                    **names.ungranted_report(manifest.id, requested, held, refused)}


def terminal_ask(json_out: bool) -> Ask | None:
    """Ask only on a terminal and never with ``--json``."""
    return ask_terminal if not json_out and sys.stdin.isatty() else None


def show_ungranted(report: dict[str, Any] | None, json_out: bool) -> None:
    """After the launch: what the app runs without (``--json``: a ``permissions``
    event, printed only when something is ungranted)."""
    if report is None or not report.get("ungranted"):
        return
    if json_out:
        out.print(json.dumps({"event": "permissions", **report}), markup=False)
    else:
        say_ungranted(report)
