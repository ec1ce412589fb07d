"""``manifest.json``: the app's description, validated by pydantic.

Keys are camelCase on disk. Unknown keys, wrong types and out-of-range values are
refused with a :class:`~estarter.errors.ManifestError` whose message names the key.
"""

from __future__ import annotations

import json
import os
from enum import Enum
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from . import permissions as perms
from .errors import ManifestError

MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 256 * 1024
DEFAULT_MAX_OPEN_FILES = 1024
_SEMVER = r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$"


class RuntimeKind(str, Enum):
    NATIVE = "native"
    WASM = "wasm"
    PYTHON = "python"


class RestartPolicy(str, Enum):
    NEVER = "never"
    ON_FAILURE = "on-failure"
    ALWAYS = "always"


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


class AppManifest(BaseModel):
    """The validated contents of an app's ``manifest.json``."""

    model_config = ConfigDict(
        alias_generator=_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        title="estarter app manifest",
    )

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$", description="app id")
    name: str = Field(default="", max_length=200)
    version: str = Field(default="0.1.0", pattern=_SEMVER)
    description: str = Field(default="", max_length=4000)
    publisher: str = Field(default="", max_length=200)
    category: str = Field(default="", max_length=100)
    runtime: RuntimeKind = RuntimeKind.NATIVE
    entry: str = Field(min_length=1, max_length=1024, description="path inside the app folder")
    args: list[str] = Field(
        default_factory=list, validation_alias=AliasChoices("args", "arguments"), max_length=256
    )
    permissions: list[str] = Field(default_factory=list, max_length=64)
    memory_limit_mb: int = Field(default=0, ge=0, le=1024 * 1024)
    max_processes: int = Field(default=0, ge=0, le=65536)
    cpu_quota: int = Field(default=0, ge=0, le=100 * (os.cpu_count() or 1))
    network_allowed: bool = False
    max_runtime_seconds: float = Field(default=0, ge=0, le=365 * 24 * 3600)
    disk_quota_mb: int = Field(default=100, ge=0, le=1024 * 1024)
    # RLIMIT_NOFILE of a native app (soft = hard); 1024 is the usual soft default.
    max_open_files: int = Field(default=DEFAULT_MAX_OPEN_FILES, ge=16, le=1024 * 1024)
    # Lines a second the app may log (stdout, stderr, log calls together), burst 2.5 s
    # of it; the runtime caps it (ESTARTER_LOG_LINES_PER_SECOND_CAP, applog.line_rate).
    log_lines_per_second: int = Field(default=2000, ge=1, le=20000)
    restart: RestartPolicy = RestartPolicy.NEVER
    sandboxed: bool = True
    # Display-only keys of the original program, accepted and kept.
    tile_size: str | None = None
    background: str | None = None
    min_api_version: str | None = None
    exe_path: str | None = None

    @field_validator("entry")
    @classmethod
    def _entry_inside(cls, value: str) -> str:
        if "\\" in value or "\x00" in value:
            raise ValueError("must be a relative POSIX path without backslashes or NUL")
        path = PurePosixPath(value)
        if path.is_absolute() or ".." in path.parts or value.startswith("~"):
            raise ValueError("must stay inside the app folder")
        return value

    @field_validator("permissions")
    @classmethod
    def _known_permissions(cls, value: list[str]) -> list[str]:
        for name in value:
            perms.normalize(name)  # raises ValueError naming it
        return value

    @field_validator("args")
    @classmethod
    def _args_no_nul(cls, value: list[str]) -> list[str]:
        if any("\x00" in arg for arg in value):
            raise ValueError("arguments cannot contain NUL")
        return value

    @model_validator(mode="after")
    def _unsandboxed_needs_admin(self) -> AppManifest:
        if not self.sandboxed and "admin" not in self.requested_permissions:
            raise ValueError("sandboxed: false needs the admin permission")
        return self

    @property
    def requested_permissions(self) -> frozenset[str]:
        """The permissions this app asks for; an empty list asks for ``basic``.
        ``networkAllowed: true`` asks for ``net.access`` too: the flag takes effect
        only once the operator grants it."""
        asked = perms.expand(self.permissions)
        return asked | {"net.access"} if self.network_allowed else asked

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def parse_manifest(raw: bytes | str, source: str = MANIFEST_NAME) -> AppManifest:
    """Validate manifest text; raises ManifestError naming the first bad key."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{source}: larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{source}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{source}: must be a JSON object")
    try:
        # Strict: "64" is not a number and "no" is not a boolean in a manifest.
        return AppManifest.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        raise _manifest_error(exc, source) from None


def _manifest_error(exc: ValidationError, source: str) -> ManifestError:
    first = exc.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(root)"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "missing":
        msg = "required key is missing"
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return ManifestError(f"{source}: {key}: {msg}{more}", {"key": key})


def load_manifest(app_dir: str | os.PathLike[str]) -> AppManifest:
    """Read and validate ``app_dir/manifest.json``; also checks the entry resolves inside."""
    folder = Path(app_dir)
    path = folder / MANIFEST_NAME
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise ManifestError(f"{path}: no manifest.json in {folder}", {"key": "manifest"}) from None
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read: {exc.strerror}") from None
    manifest = parse_manifest(raw, str(path))
    resolve_entry(folder, manifest)
    return manifest


def resolve_entry(app_dir: Path, manifest: AppManifest) -> Path:
    """The entry's real path; refuses an entry that leaves the folder (symlinks included)."""
    root = app_dir.resolve()
    target = (root / manifest.entry).resolve()
    if not target.is_relative_to(root):
        raise ManifestError(f"entry: {manifest.entry!r} resolves outside the app folder",
                            {"key": "entry"})
    return target


def manifest_schema() -> dict[str, Any]:
    """The JSON Schema of manifest.json (what ``estarter manifest schema`` prints)."""
    return AppManifest.model_json_schema(by_alias=True, mode="validation")
