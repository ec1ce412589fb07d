"""LaunchPlan: what the process host runs, and the record of what was (not) applied."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import SandboxUnavailable


@dataclass
class LaunchPlan:
    """How to start the child: ``launcher spec`` + ``wrapper`` + app argv."""

    spec: dict[str, Any]
    wrapper: list[str]
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    applied: list[str] = field(default_factory=list)
    not_applied: list[str] = field(default_factory=list)
    # Open in the supervisor, for the child (``Popen(pass_fds=...)``): the outbound
    # network's info and block pipes. A launch without them fails closed.
    pass_fds: tuple[int, ...] = ()


class Outcome:
    """Collects applied / not applied lines; in strict mode a miss raises at once."""

    def __init__(self, app_id: str, strict: bool) -> None:
        self.app_id = app_id
        self.strict = strict
        self.applied: list[str] = []
        self.not_applied: list[str] = []

    def ok(self, line: str) -> None:
        self.applied.append(line)

    def missing(self, line: str) -> None:
        if self.strict:
            raise SandboxUnavailable(
                f"{self.app_id}: cannot apply {line} (strict mode refuses to launch)",
                {"limit": line},
            )
        self.not_applied.append(line)
