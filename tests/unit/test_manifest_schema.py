"""The manifest's JSON Schema as an editor and an author see it: ``$schema`` accepted,
a description on every property, the permission names listed with what each allows,
the same words from ``manifest check``; an integer ``minApiVersion``; ``--version``
and shell completion."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from estarter import permissions as perms
from estarter.cli import app
from estarter.errors import ManifestError
from estarter.manifest import api_level, describe_key, manifest_schema, parse_manifest
from estarter.version import API_VERSION, __version__

BASE: dict[str, Any] = {"id": "demo", "entry": "app.py"}


def properties(node: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    """Every property schema in ``node`` (nested objects and $defs too), with its path."""
    if isinstance(node, dict):
        for name, sub in (node.get("properties") or {}).items():
            yield f"{where}.{name}", sub
        for key, sub in node.items():
            yield from properties(sub, f"{where}/{key}")
    elif isinstance(node, list):
        for i, sub in enumerate(node):
            yield from properties(sub, f"{where}[{i}]")


def test_a_manifest_naming_its_schema_validates() -> None:
    m = parse_manifest(json.dumps({"$schema": "./manifest.schema.json", **BASE}))
    assert m.schema_uri == "./manifest.schema.json"
    assert m.to_json()["$schema"] == "./manifest.schema.json"
    with pytest.raises(ManifestError, match=r"\$schema"):
        parse_manifest(json.dumps({"$schema": 5, **BASE}))


def test_every_property_has_a_description() -> None:
    schema = manifest_schema()
    found = list(properties(schema))
    assert len(found) >= 25  # the walk reaches every key (nested models: next test)
    missing = [path for path, sub in found
               if not isinstance(sub, dict) or not str(sub.get("description", "")).strip()]
    assert missing == []


def test_the_walk_fails_on_a_property_without_a_description() -> None:
    schema = manifest_schema()
    schema.setdefault("$defs", {})["Nested"] = {
        "type": "object", "description": "a nested model",
        "properties": {"ok": {"type": "integer", "description": "has one"},
                       "x": {"anyOf": [{"type": "object", "properties": {
                           "deeper": {"type": "string"}}}], "description": "x"}}}
    assert [p for p, s in properties(schema) if "description" not in s] == [
        "/$defs/Nested/properties/x/anyOf[0].deeper"]


def test_descriptions_give_units_defaults_and_ranges() -> None:
    props = manifest_schema()["properties"]
    cores = os.cpu_count() or 1
    cpu = props["cpuQuota"]["description"]
    assert "percent of one core" in cpu and "0 = unlimited" in cpu
    assert f"({100 * cores} here)" in cpu and props["cpuQuota"]["maximum"] == 100 * cores
    assert "MiB" in props["memoryLimitMb"]["description"]
    assert "default 100" in props["diskQuotaMb"]["description"]
    assert "seconds" in props["maxRuntimeSeconds"]["description"]
    assert "dotnet" in props["runtime"]["description"]


def test_permission_names_are_enumerated_with_what_each_allows() -> None:
    prop = manifest_schema()["properties"]["permissions"]
    consts = {alt["const"]: alt["description"] for alt in prop["items"]["anyOf"]}
    assert set(consts) == {*perms.ALL, *perms.BUNDLES, *perms.ALIASES}
    assert all(text.strip() for text in consts.values())
    assert "/dev/video" in consts["Camera"] == consts["device.camera"]
    for name in (*perms.ALL, *perms.BUNDLES):
        assert f"{name}: {perms.MEANINGS[name]}" in prop["description"]


def test_manifest_check_prints_the_schema_words_for_an_error(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({**BASE, "cpuQuota": 100000}))
    result = CliRunner().invoke(app, ["manifest", "check", str(tmp_path)])
    meaning = describe_key("cpuQuota")
    assert result.exit_code == 2 and meaning is not None
    assert f"cpuQuota: {meaning}" in result.output
    assert "cpuQuota: Input should be less than or equal to" in result.output


def test_describe_key_follows_nested_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    import estarter.manifest as manifest_module

    assert describe_key("permissions.3") == (
        manifest_schema()["properties"]["permissions"]["description"])
    assert describe_key("nonsense") is None
    nested = {"properties": {"outer": {"description": "outer", "anyOf": [
        {"type": "array", "items": {"$ref": "#/$defs/Inner"}}, {"type": "null"}]}},
        "$defs": {"Inner": {"properties": {"leaf": {"description": "the leaf"}}}}}
    monkeypatch.setattr(manifest_module, "manifest_schema", lambda: nested)
    assert describe_key("outer.0.leaf") == "the leaf"
    assert describe_key("outer.0.missing") == "outer"


@pytest.mark.parametrize(("value", "level"), [(1, (1, 0)), (0, (0, 0)), ("1", (1, 0)),
                                              ("1.0", (1, 0)), ("0.9.3", (0, 9))])
def test_min_api_version_integer_or_string(value: int | str, level: tuple[int, int]) -> None:
    m = parse_manifest(json.dumps({**BASE, "minApiVersion": value}))
    assert m.min_api_version == value and api_level(value) == level
    assert m.to_json()["minApiVersion"] == value


@pytest.mark.parametrize("value", [2, "1.1", "2.0", "one", "1.x", -1, True, 1.5])
def test_min_api_version_above_ours_or_malformed_is_refused(value: Any) -> None:
    with pytest.raises(ManifestError, match="minApiVersion"):
        parse_manifest(json.dumps({**BASE, "minApiVersion": value}))


def test_version_option() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == (
        f"estarter {__version__} (app API {API_VERSION[0]}.{API_VERSION[1]})")


def test_shell_completion_is_on(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "estarter"
    env = {**os.environ, "_ESTARTER_COMPLETE": "complete_bash",
           "COMP_WORDS": "estarter permissions gr", "COMP_CWORD": "2"}
    done = subprocess.run([str(exe)], env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["grant"]
    # Without typer's switch, --install-completion takes no value and guesses the shell
    # from this process's ancestors (shellingham), which fails when pytest was not
    # started from a shell; with it, the option takes the shell's name, as given here.
    env = {**os.environ, "HOME": str(tmp_path), "SHELL": "/bin/bash",
           "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    done = subprocess.run([str(exe), "--install-completion", "bash"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    script = tmp_path / ".bash_completions" / "estarter.sh"
    assert "_ESTARTER_COMPLETE" in script.read_text()
    assert str(script) in (tmp_path / ".bashrc").read_text()
