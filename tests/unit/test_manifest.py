"""AppManifest: every key of DESIGN's table, its range, aliases, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from estarter import permissions as perms
from estarter.errors import ManifestError
from estarter.manifest import (
    AppManifest,
    RestartPolicy,
    RuntimeKind,
    load_manifest,
    manifest_schema,
    parse_manifest,
)

BASE: dict[str, Any] = {"id": "demo", "entry": "app.py"}


def parse(**extra: Any) -> AppManifest:
    return parse_manifest(json.dumps({**BASE, **extra}))


def test_defaults() -> None:
    m = parse()
    assert m.runtime is RuntimeKind.NATIVE
    assert m.args == [] and m.permissions == []
    assert m.requested_permissions == perms.BASIC
    assert (m.memory_limit_mb, m.max_processes, m.cpu_quota) == (0, 0, 0)
    assert m.network_allowed is False and m.max_runtime_seconds == 0
    assert m.disk_quota_mb == 100 and m.max_open_files == 1024
    assert m.restart is RestartPolicy.NEVER and m.sandboxed is True


def test_every_key_round_trips_in_camel_case() -> None:
    full = {
        **BASE, "name": "Demo", "version": "1.2.3-beta.1+build.5", "description": "d",
        "publisher": "p", "category": "tools", "runtime": "python", "args": ["-v"],
        "permissions": ["fs.read", "fs.write", "admin"], "memoryLimitMb": 64,
        "maxProcesses": 8, "cpuQuota": 50, "networkAllowed": True,
        "maxRuntimeSeconds": 1.5, "diskQuotaMb": 10, "maxOpenFiles": 4096,
        "logLinesPerSecond": 500, "restart": "on-failure",
        "sandboxed": False, "tileSize": "wide", "background": "#fff",
        "minApiVersion": "1.0", "exePath": "app.exe",
    }
    m = parse_manifest(json.dumps(full))
    assert m.to_json() == full


def test_arguments_alias_and_original_permission_names() -> None:
    m = parse(arguments=["a", "b"], permissions=["FileRead", "IpcSend", "Standard"])
    assert m.args == ["a", "b"]
    assert m.requested_permissions == perms.STANDARD | {"fs.read", "ipc.send"}


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ({"id": "Bad Id"}, "id"),
        ({"id": ""}, "id"),
        ({"id": "-lead"}, "id"),
        ({"id": "a" * 65}, "id"),
        ({"version": "1.0"}, "version"),
        ({"runtime": "java"}, "runtime"),
        ({"entry": "../x.py"}, "entry"),
        ({"entry": "/abs.py"}, "entry"),
        ({"entry": "a\\b.py"}, "entry"),
        ({"entry": ""}, "entry"),
        ({"entry": "~/x"}, "entry"),
        ({"args": "not a list"}, "args"),
        ({"args": ["nul\x00"]}, "args"),
        ({"permissions": ["fs.teleport"]}, "permissions"),
        ({"memoryLimitMb": -1}, "memoryLimitMb"),
        ({"memoryLimitMb": "64"}, "memoryLimitMb"),
        ({"maxProcesses": -2}, "maxProcesses"),
        ({"logLinesPerSecond": 0}, "logLinesPerSecond"),
        ({"logLinesPerSecond": 20001}, "logLinesPerSecond"),
        ({"cpuQuota": -5}, "cpuQuota"),
        ({"cpuQuota": 100000}, "cpuQuota"),
        ({"networkAllowed": "yes"}, "networkAllowed"),
        ({"maxRuntimeSeconds": -1}, "maxRuntimeSeconds"),
        ({"diskQuotaMb": -1}, "diskQuotaMb"),
        ({"maxOpenFiles": 15}, "maxOpenFiles"),
        ({"maxOpenFiles": 1024 * 1024 + 1}, "maxOpenFiles"),
        ({"maxOpenFiles": "64"}, "maxOpenFiles"),
        ({"restart": "sometimes"}, "restart"),
        ({"sandboxed": "no"}, "sandboxed"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_bad_values_name_their_key(extra: dict[str, Any], key: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse(**extra)
    assert key in str(info.value)
    assert info.value.data == {"key": key} or key in info.value.data["key"]


def test_missing_required_keys_are_named() -> None:
    with pytest.raises(ManifestError, match="entry: required key is missing"):
        parse_manifest('{"id": "x"}')
    with pytest.raises(ManifestError, match="id: required key is missing"):
        parse_manifest('{"entry": "x"}')


def test_unsandboxed_needs_admin() -> None:
    with pytest.raises(ManifestError, match="admin"):
        parse(sandboxed=False)
    assert parse(sandboxed=False, permissions=["admin"]).sandboxed is False


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1, 2]", b"\xff\xfe", b'"x"'])
def test_not_a_json_object(raw: bytes) -> None:
    with pytest.raises(ManifestError):
        parse_manifest(raw)


def test_oversize_manifest_is_refused() -> None:
    with pytest.raises(ManifestError, match="larger than"):
        parse_manifest(b" " * (300 * 1024))


def test_load_checks_entry_symlink_stays_inside(tmp_path: Path) -> None:
    outside = tmp_path / "outside.py"
    outside.write_text("")
    app = tmp_path / "app"
    app.mkdir()
    (app / "manifest.json").write_text(json.dumps({"id": "a", "entry": "link.py"}))
    (app / "link.py").symlink_to(outside)
    with pytest.raises(ManifestError, match="outside the app folder"):
        load_manifest(app)


def test_load_without_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"no manifest\.json"):
        load_manifest(tmp_path)


def test_schema_uses_camel_case_and_forbids_extra() -> None:
    schema = manifest_schema()
    assert "memoryLimitMb" in schema["properties"]
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"id", "entry"}
