"""SandboxPolicy: what a host must enforce for one app, derived from its manifest.

Pure data, no I/O: the manifest plus where the app lives and what the operator
granted becomes one frozen value that hosts, limits and the kernel all read.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import PermissionDenied
from .kinds import DEFAULT_MAX_OPEN_FILES, RestartPolicy, RuntimeKind, resolve_entry
from .permissions import BASIC

if TYPE_CHECKING:  # a policy is made from a manifest on the kernel's side only: a
    # supervisor worker unpickles policies and never loads pydantic (kinds.py)
    from .manifest import AppManifest

MIB = 1024 * 1024


def requests_of(manifest: AppManifest) -> tuple[int, int]:
    """(cpu_quota_percent, memory_limit_bytes) as the app's policy holds them: what its
    supervisor asks of the cluster (``placement.request_of``)."""
    return manifest.cpu_quota, manifest.memory_limit_mb * MIB


@dataclass(frozen=True)
class SandboxPolicy:
    app_id: str
    runtime: RuntimeKind
    app_dir: Path
    entry: Path  # absolute, checked to be inside app_dir
    args: tuple[str, ...]
    requested: frozenset[str]
    granted: frozenset[str]  # what the operator allowed; always a subset of requested
    memory_limit_bytes: int  # 0 = unlimited
    max_processes: int  # 0 = unlimited
    cpu_quota_percent: int  # percent of one core, 0 = unlimited
    network_allowed: bool
    max_runtime_seconds: float  # 0 = unlimited
    disk_quota_bytes: int
    restart: RestartPolicy
    sandboxed: bool
    strict: bool = False  # refuse to launch when a limit cannot be applied
    max_open_files: int = DEFAULT_MAX_OPEN_FILES  # RLIMIT_NOFILE of a native app
    version: str = "0.1.0"
    log_lines_per_second: int = 2000  # the app's log budget, capped by the runtime
    extra_env: tuple[tuple[str, str], ...] = field(default=())
    # A python app's own dependencies (its requirements.txt, installed by pip):
    # bound read-only into the sandbox and put on its sys.path (pydeps.py).
    python_deps: Path | None = None
    # The operator's configuration (manifest ``env``, appconfig.py), values included:
    # kept out of repr so that no log line or error message that shows a policy
    # shows a secret. Set by the kernel at launch (``with_app_env``).
    app_env: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    heartbeat_seconds: float = 0.0  # 0: no healthCheck
    heartbeat_grace_seconds: float = 0.0  # added to the first heartbeat's deadline

    @classmethod
    def from_manifest(
        cls,
        manifest: AppManifest,
        app_dir: Path,
        granted: frozenset[str] | None = None,
        strict: bool = False,
    ) -> SandboxPolicy:
        """Build the policy; ``granted`` defaults to the requested part of ``basic`` (what
        is granted without asking), and is never more than what is requested."""
        requested = manifest.requested_permissions
        cpu_quota_percent, memory_limit_bytes = requests_of(manifest)
        return cls(
            app_id=manifest.id,
            runtime=manifest.runtime,
            app_dir=app_dir.resolve(),
            entry=resolve_entry(app_dir, manifest.entry),
            args=tuple(manifest.args),
            requested=requested,
            granted=(requested & BASIC) if granted is None else (granted & requested),
            memory_limit_bytes=memory_limit_bytes,
            max_processes=manifest.max_processes,
            cpu_quota_percent=cpu_quota_percent,
            network_allowed=manifest.network_allowed,
            max_runtime_seconds=float(manifest.max_runtime_seconds),
            disk_quota_bytes=manifest.disk_quota_mb * MIB,
            max_open_files=manifest.max_open_files,
            restart=manifest.restart,
            sandboxed=manifest.sandboxed,
            strict=strict,
            version=manifest.version,
            log_lines_per_second=manifest.log_lines_per_second,
            heartbeat_seconds=(manifest.health_check.heartbeat_seconds
                               if manifest.health_check else 0.0),
            heartbeat_grace_seconds=(manifest.health_check.start_grace_seconds
                                     if manifest.health_check else 0.0),
        )

    def with_app_env(self, env: dict[str, str]) -> SandboxPolicy:
        return replace(self, app_env=tuple(sorted(env.items())))

    def with_grants(self, granted: frozenset[str]) -> SandboxPolicy:
        return replace(self, granted=granted & self.requested)

    def allows(self, permission: str) -> bool:
        return permission in self.granted

    def ungranted_escape_hatches(self) -> list[tuple[str, str]]:
        """(manifest flag, permission) for each flag that would widen the sandbox but
        lacks the operator's grant. Requesting is not enough: the flag counts only
        when the permission was granted."""
        out = []
        if not self.sandboxed and not self.allows("admin"):
            out.append(("sandboxed: false", "admin"))
        if self.network_allowed and not self.allows("net.access"):
            out.append(("networkAllowed: true", "net.access"))
        return out

    def require_escape_hatch_grants(self) -> None:
        """Raise PermissionDenied (one clear line) if a widening flag is not granted.

        Checked by the kernel before a launch and again by the host that would apply
        the flag, so a policy built by hand cannot skip it either."""
        missing = self.ungranted_escape_hatches()
        if not missing:
            return
        flags = " and ".join(f"{flag} needs the {perm} permission granted"
                             for flag, perm in missing)
        perms = " ".join(perm for _, perm in missing)
        raise PermissionDenied(
            f"app {self.app_id}: {flags}; the operator grants it with "
            f"`estarter permissions grant {self.app_id} {perms}` or `--grant`",
            {"permission": missing[0][1], "appId": self.app_id})
