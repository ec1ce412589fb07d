"""``manifest.json``: the app's description, validated by pydantic.

Keys are camelCase on disk. Unknown keys, wrong types and out-of-range values are
refused with a :class:`~estarter.errors.ManifestError` whose message names the key.
"""

from __future__ import annotations

import json
import os
import re
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
from .kinds import DEFAULT_MAX_OPEN_FILES as DEFAULT_MAX_OPEN_FILES
from .kinds import RestartPolicy as RestartPolicy
from .kinds import RuntimeKind as RuntimeKind
from .kinds import resolve_entry
from .version import API_VERSION

MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 256 * 1024
_SEMVER = r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$"


def api_level(value: int | str) -> tuple[int, int]:
    """``minApiVersion`` as (major, minor): the original's integer N is (N, 0);
    a string is 'MAJOR', 'MAJOR.MINOR' or 'MAJOR.MINOR.PATCH' (the patch is ignored:
    a patch never changes the API). ValueError for anything else."""
    if isinstance(value, bool):
        raise ValueError("must be an integer or a 'MAJOR.MINOR' string")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must be >= 0")
        return (value, 0)
    match = re.fullmatch(r"(0|[1-9]\d{0,5})(?:\.(0|[1-9]\d{0,5}))?(?:\.(?:0|[1-9]\d{0,5}))?",
                         value)
    if match is None:
        raise ValueError("must be an integer or a 'MAJOR.MINOR' string")
    return (int(match.group(1)), int(match.group(2) or 0))


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


# App configuration (``env``): the variables an app takes, set by the operator with
# ``estarter config set`` (estarter/appconfig.py). Bounded so that an app's whole
# environment stays far below the 64 KiB of /proc/PID/environ the native launcher
# reads when it sweeps an app's processes by their limits token.
ENV_NAME_PATTERN = r"^[A-Z_][A-Z0-9_]{0,127}$"
MAX_ENV_VARS = 64
MAX_ENV_VALUE_BYTES = 4096
MAX_ENV_TOTAL_BYTES = 32 * 1024
# Names estarter sets itself (hosting/process_host.child_env, the wasm host's WASI
# env, the launcher's ESTARTER_LIMITS_TOKEN), and prefixes that would change how the
# launcher (root, before it drops privileges) or an interpreter behaves.
RESERVED_ENV_NAMES = frozenset({"PATH", "LANG"})
RESERVED_ENV_PREFIXES = ("ESTARTER_", "LD_", "PYTHON")


def check_env_name(name: str) -> str:
    """``name`` if an app may take it as a variable; ValueError saying why not."""
    if not re.fullmatch(ENV_NAME_PATTERN, name):
        raise ValueError(f"{name!r} is not a variable name (upper case letters, digits "
                         f"and _, not starting with a digit, at most 128)")
    if name in RESERVED_ENV_NAMES or name.startswith(RESERVED_ENV_PREFIXES):
        raise ValueError(f"{name!r} is reserved: estarter sets it or it changes how the "
                         f"launcher or an interpreter behaves ("
                         f"{', '.join(sorted(RESERVED_ENV_NAMES))} and "
                         f"{', '.join(p + '*' for p in RESERVED_ENV_PREFIXES)})")
    return name


def check_env_value(name: str, value: str) -> str:
    """``value`` if it fits an environment variable; ValueError naming ``name``."""
    if "\x00" in value:
        raise ValueError(f"{name}: a value cannot contain NUL")
    if len(value.encode("utf-8")) > MAX_ENV_VALUE_BYTES:
        raise ValueError(f"{name}: a value is at most {MAX_ENV_VALUE_BYTES} bytes")
    return value


class EnvVar(BaseModel):
    """One variable an app takes (an entry of ``env``)."""

    model_config = ConfigDict(alias_generator=_camel, populate_by_name=True,
                              extra="forbid", frozen=True)

    name: str = Field(description="the variable's name: [A-Z_][A-Z0-9_]*, not one "
                                  "estarter sets (PATH, LANG, ESTARTER_*, LD_*, PYTHON*)")
    description: str = Field(default="", max_length=1000,
                             description="what the variable is for (shown by "
                                         "`estarter config list`)")
    secret: bool = Field(default=False,
                         description="the value is a secret: stored 0600, never printed "
                                     "or logged; a secret has no default")
    default: str | None = Field(default=None,
                                description="the value the app gets when the operator "
                                            "set none (omit: the variable is then unset)")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_env_name(value)

    @model_validator(mode="after")
    def _default(self) -> EnvVar:
        if self.default is not None:
            if self.secret:
                raise ValueError(f"{self.name}: a secret cannot have a default (it would "
                                 f"not be secret)")
            check_env_value(self.name, self.default)
        return self


class HealthCheck(BaseModel):
    """``healthCheck``: the app proves it is alive by calling ``system.heartbeat``."""

    model_config = ConfigDict(alias_generator=_camel, populate_by_name=True,
                              extra="forbid", frozen=True)

    heartbeat_seconds: float = Field(
        ge=1, le=24 * 3600,
        description="the app calls system.heartbeat at least this often; a missed "
                    "heartbeat ends it (exit reason unresponsive) and its restart "
                    "policy applies")
    start_grace_seconds: float = Field(
        default=10, ge=0, le=3600,
        description="extra seconds before the first heartbeat is due, counted from "
                    "the app's start (each restart too)")


class AppManifest(BaseModel):
    """The validated contents of an app's ``manifest.json``."""

    model_config = ConfigDict(
        alias_generator=_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        title="estarter app manifest",
    )

    # Editors (VS Code, JetBrains) validate and complete a manifest that names its
    # schema; estarter accepts the key and ignores its value.
    schema_uri: str | None = Field(
        default=None, alias="$schema", max_length=2048,
        description="the JSON Schema this file follows, for editors: a path or URL of "
                    "the output of `estarter manifest schema`; ignored by estarter")
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$",
                    description="the app's id, unique on a host: 1 to 64 characters of "
                                "a-z, 0-9, '.', '_' and '-', starting with a letter or "
                                "digit; it names the app's data, grants and logs. Required")
    name: str = Field(default="", max_length=200,
                      description="display name, at most 200 characters; default: empty")
    version: str = Field(default="0.1.0", pattern=_SEMVER,
                         description="the app's version, semver MAJOR.MINOR.PATCH with an "
                                     "optional -prerelease and +build; default 0.1.0")
    description: str = Field(default="", max_length=4000,
                             description="what the app does, at most 4000 characters; "
                                         "default: empty")
    publisher: str = Field(default="", max_length=200,
                           description="who made the app, at most 200 characters; "
                                       "default: empty")
    category: str = Field(default="", max_length=100,
                          description="a free-form group for listings, at most 100 "
                                      "characters; default: empty")
    runtime: RuntimeKind = Field(
        default=RuntimeKind.NATIVE,
        description="how the entry runs: native (an executable, run directly), python "
                    "(a script run by the host's Python in isolated mode, the SDK "
                    "importable), wasm (a WASI preview1 module run in wasmtime), dotnet "
                    "(`dotnet ENTRY`, only where a .NET host is on PATH); default native")
    entry: str = Field(min_length=1, max_length=1024,
                       description="the file that runs: a relative POSIX path inside the "
                                   "app folder (no '..', no leading '/', no backslash; a "
                                   "symlink must stay inside too). Required")
    args: list[str] = Field(
        default_factory=list, validation_alias=AliasChoices("args", "arguments"), max_length=256,
        description="command-line arguments after the entry, at most 256 (no NUL); "
                    "'arguments' is accepted too; default []",
    )
    permissions: list[str] = Field(
        default_factory=list, max_length=64,
        description="the permissions the app requests: names, bundles or the original "
                    "program's names, at most 64; none or [] requests basic. Those in "
                    "basic are granted without asking, any other only by the operator "
                    "(install/run --grant, a prompt, `estarter permissions grant`)")
    memory_limit_mb: int = Field(
        default=0, ge=0, le=1024 * 1024,
        description="memory the app may use, in MiB (cgroup memory.max; wasm: store "
                    "limit); beyond it the app ends with exit reason memory_limit; "
                    "0 = unlimited (default); at most 1048576")
    max_processes: int = Field(
        default=0, ge=0, le=65536,
        description="processes and threads the app may have at once (cgroup pids.max); "
                    "native, python and dotnet apps only; 0 = unlimited (default); "
                    "at most 65536")
    cpu_quota: int = Field(
        default=0, ge=0, le=100 * (os.cpu_count() or 1),
        description="CPU time the app may use, in percent of one core: 50 = half a core, "
                    "100 = one core, 200 = two cores (cgroup cpu.max; wasm: fuel); "
                    "0 = unlimited (default); at most 100 x this host's cores "
                    f"({100 * (os.cpu_count() or 1)} here)")
    network_allowed: bool = Field(
        default=False,
        description="the app may use the network: true requests net.access, and the "
                    "network is there only once that is granted; false (default): "
                    "loopback only")
    max_runtime_seconds: float = Field(
        default=0, ge=0, le=365 * 24 * 3600,
        description="wall-clock seconds the app may run, then it is stopped with exit "
                    "reason timeout; fractions allowed; 0 = unlimited (default); at most "
                    "31536000 (a year)")
    disk_quota_mb: int = Field(
        default=100, ge=0, le=1024 * 1024,
        description="MiB the app may hold in its VFS zones (appdata, cache, temp), "
                    "enforced on fs.write (-32003 quota exceeded); 0 = it may write "
                    "nothing; default 100; at most 1048576")
    # RLIMIT_NOFILE of a native app (soft = hard); 1024 is the usual soft default.
    max_open_files: int = Field(
        default=DEFAULT_MAX_OPEN_FILES, ge=16, le=1024 * 1024,
        description="files and sockets the app may have open at once (RLIMIT_NOFILE, "
                    "soft = hard); native, python and dotnet apps only; default 1024; "
                    "range 16 to 1048576")
    # Lines a second the app may log (stdout, stderr, log calls together), burst 2.5 s
    # of it; the runtime caps it (ESTARTER_LOG_LINES_PER_SECOND_CAP, applog.line_rate).
    log_lines_per_second: int = Field(
        default=2000, ge=1, le=20000,
        description="lines a second the app may log (stdout, stderr and log calls "
                    "together; bursts of 2.5 s of it), beyond which lines are dropped "
                    "and counted; the operator may cap it lower; default 2000; range 1 "
                    "to 20000")
    restart: RestartPolicy = Field(
        default=RestartPolicy.NEVER,
        description="what happens when the app ends: never (default), on-failure (it is "
                    "started again after a non-zero exit, a crash or a limit), always; "
                    "with a backoff from 1 s doubling to 30 s, and marked failed after "
                    "more than 5 restarts within 60 s")
    sandboxed: bool = Field(
        default=True,
        description="run in the sandbox: own namespaces, uid 65534, no capabilities, "
                    "only system folders, the app folder (read-only) and its VFS zones "
                    "visible; false (the host's folders read-only) needs the admin "
                    "permission; default true")
    # Run by `estarter run --watch` (estarter/watch.py) before every run; not at install.
    build: str | None = Field(
        default=None, min_length=1, max_length=4096,
        description="how to rebuild the app from its sources (say a wasm module from "
                    "C): a shell command run with /bin/sh in the app folder, e.g. "
                    "'./build.sh' or 'clang --target=wasm32-wasi -o app.wasm app.c'; "
                    "`estarter run --watch` runs it before each run and skips a run "
                    "whose build fails; at most 300 s; default: none (no build)")
    env: list[EnvVar] | None = Field(
        default=None, max_length=MAX_ENV_VARS,
        description="the environment variables the app takes, set with `estarter config "
                    "set APP NAME=VALUE`; nothing else from the host's environment "
                    "reaches the app")
    health_check: HealthCheck | None = Field(
        default=None, description="a watchdog: the app must call system.heartbeat "
                                  "at least every heartbeatSeconds")
    # Display-only keys of the original program, accepted and kept.
    tile_size: str | None = Field(
        default=None, description="the original program's tile size (display only; "
                                  "accepted and kept, not used by estarter)")
    background: str | None = Field(
        default=None, description="the original program's tile background (display "
                                  "only; accepted and kept, not used by estarter)")
    # The original's integer API level N is our N.0 (DESIGN, "The original's manifests").
    min_api_version: int | str | None = Field(
        default=None,
        description="the lowest kernel API version the app needs: an integer N (the "
                    "original program's form, meaning N.0) or 'MAJOR.MINOR'; this "
                    f"estarter serves {API_VERSION[0]}.{API_VERSION[1]} (the original's "
                    "API 1) and refuses an app needing more; default: none")
    exe_path: str | None = Field(
        default=None, description="the original program's executable path (accepted and "
                                  "kept, not used: entry is what runs)")

    @field_validator("entry")
    @classmethod
    def _entry_inside(cls, value: str) -> str:
        if "\\" in value or "\x00" in value:
            raise ValueError("must be a relative POSIX path without backslashes or NUL")
        path = PurePosixPath(value)
        if path.is_absolute() or ".." in path.parts or value.startswith("~"):
            raise ValueError("must stay inside the app folder")
        return value

    @field_validator("min_api_version")
    @classmethod
    def _api_served(cls, value: int | str | None) -> int | str | None:
        if value is not None:
            needed = api_level(value)  # raises ValueError for a malformed one
            if needed > API_VERSION:
                raise ValueError(f"the app needs API {needed[0]}.{needed[1]}; this "
                                 f"estarter serves {API_VERSION[0]}.{API_VERSION[1]}")
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

    @field_validator("env")
    @classmethod
    def _env_names_once(cls, value: list[EnvVar] | None) -> list[EnvVar] | None:
        names = [var.name for var in value or []]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"declared more than once: {', '.join(twice)}")
        total = sum(len(var.default.encode()) for var in value or [] if var.default)
        if total > MAX_ENV_TOTAL_BYTES:
            raise ValueError(f"defaults take more than {MAX_ENV_TOTAL_BYTES} bytes")
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

    def declared_env(self) -> dict[str, EnvVar]:
        """The variables the app takes, by name (``env``; none if it has no ``env``)."""
        return {var.name: var for var in self.env or []}

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
    resolve_entry(folder, manifest.entry)
    return manifest


JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
_ENUM_MEANINGS = {
    "RuntimeKind": "how the entry runs: native, python, wasm or dotnet",
    "RestartPolicy": "what happens when the app ends: never, on-failure or always",
}


def manifest_schema() -> dict[str, Any]:
    """The JSON Schema of manifest.json (what ``estarter manifest schema`` prints).

    Every property has a description (meaning, unit, default, range), and each
    permission name, bundle and alias is listed with what it allows, as an ``anyOf``
    of ``const`` values that editors show while completing."""
    schema = AppManifest.model_json_schema(by_alias=True, mode="validation")
    schema = {"$schema": JSON_SCHEMA_DIALECT, **schema}
    for name, meaning in _ENUM_MEANINGS.items():
        schema.get("$defs", {}).get(name, {}).setdefault("description", meaning)
    prop = schema["properties"]["permissions"]
    prop["description"] += ". " + permission_help()
    prop["items"] = {
        "type": "string",
        "description": "a permission, a bundle, or the original program's name for one",
        "anyOf": [{"const": name, "description": perms.describe(name)}
                  for name in (*perms.ALL, *perms.BUNDLES, *perms.ALIASES)],
    }
    return schema


def permission_help() -> str:
    """Every permission and bundle with what it allows, on one line."""
    known = [f"{name}: {perms.MEANINGS[name]}" for name in (*perms.ALL, *perms.BUNDLES)]
    return ("Known names (" + "; ".join(known) + "). The original program's names ("
            + ", ".join(perms.ALIASES) + ") are accepted for these")


def describe_key(key: str) -> str | None:
    """The schema's description of a manifest key as an error names it (``cpuQuota``,
    ``env.0.name``, ``healthCheck.heartbeatSeconds``): the innermost one found."""
    schema = manifest_schema()
    defs = schema.get("$defs", {})
    node: dict[str, Any] = schema
    found: str | None = None
    for part in key.split("."):
        props = _properties(node, defs)
        if part not in props:
            if part.isdigit():
                continue
            break
        node = props[part]
        found = node.get("description", found)
    return found


def _properties(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """The ``properties`` reachable from ``node`` through $ref, anyOf and items."""
    stack = [node]
    while stack:
        here = stack.pop()
        if "properties" in here:
            return dict(here["properties"])
        ref = here.get("$ref", "")
        if ref.startswith("#/$defs/"):
            stack.append(defs.get(ref.removeprefix("#/$defs/"), {}))
        stack += [alt for alt in here.get("anyOf", []) if isinstance(alt, dict)]
        if isinstance(here.get("items"), dict):
            stack.append(here["items"])
    return {}
