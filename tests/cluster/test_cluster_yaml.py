"""cluster.yaml: valid for Ray's cluster launcher, and every ``estarter ...`` command
in it is a real command of our CLI with options it accepts. Starts no Ray."""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from actors.options import RAY_SYSTEM_CONFIG

ROOT = Path(__file__).resolve().parents[2]
COMMAND_KEYS = ("initialization_commands", "setup_commands", "head_setup_commands",
                "worker_setup_commands", "head_start_ray_commands",
                "worker_start_ray_commands")
# Where one simple shell command ends and the next begins (lists, pipes, $(...)).
SEPARATORS = re.compile(r"&&|\|\||\$\(|[;|()`]")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "cluster.yaml").read_text()))


def estarter_calls(config: dict[str, Any]) -> list[list[str]]:
    """The argv after ``estarter`` of every simple command whose program is estarter."""
    calls = []
    for key in COMMAND_KEYS:
        for command in config.get(key, []):
            for part in SEPARATORS.split(command):
                words = shlex.split(part.replace('"', " ").replace("'", " "))
                while words and ASSIGNMENT.match(words[0]):
                    words.pop(0)  # VAR=value prefixes
                if words and words[0].rsplit("/", 1)[-1] == "estarter":
                    calls.append(words[1:])
    return calls


def test_valid_for_the_ray_cluster_launcher(config: dict[str, Any]) -> None:
    import jsonschema
    import ray
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json")
                        .read_text())
    jsonschema.validate(config, schema)
    # What `ray up` does with it: fill in defaults and node types, then validate.
    validate_config(prepare_config(copy.deepcopy(config)))
    assert config["head_start_ray_commands"] and config["worker_start_ray_commands"]


def test_every_estarter_command_exists_with_its_options(config: dict[str, Any]) -> None:
    import typer

    from estarter.cli import app

    group: Any = typer.main.get_command(app)  # a click group (typer may vendor click)
    calls = estarter_calls(config)
    assert [c[0] for c in calls if c and c[0] == "up"] == ["up"], "the head runs estarter up"
    for argv in calls:
        assert argv, "a bare estarter call"
        name, args = argv[0], argv[1:]
        assert name in group.commands, f"estarter {name} is not a command of the CLI"
        # Parsing (not running) the call: an unknown option raises UsageError.
        group.commands[name].make_context(name, list(args))


def test_setup_installs_estarter_and_nodes_advertise_slots(config: dict[str, Any]) -> None:
    setup = " ".join(config["setup_commands"])
    assert re.search(r"pip install [^;&|]*/opt/estarter/src", setup)
    assert config["file_mounts"]["/opt/estarter/src"] == "."
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        assert starts and all("python -m estarter.placement" in c for c in starts), key


def test_the_call_pattern_finds_paths_and_bare_names() -> None:
    found = estarter_calls({"setup_commands": [
        "X=1 ~/v/bin/estarter up --address a:1", "estarter down || true",
        "ESTARTER_HOME=/var/lib/estarter true", "mkdir -p /var/lib/estarter && ls",
        "echo estarter-venv", "pip install /opt/estarter/src"]})
    assert found == [["up", "--address", "a:1"], ["down"]]


def test_head_declares_fast_health_checks_and_shared_storage(config: dict[str, Any]) -> None:
    """The README's settings for node loss and one view of files (issue 16), and
    estarter's workers at nice 0 (actors.options.RAY_SYSTEM_CONFIG)."""
    head = " ".join(config["head_start_ray_commands"])
    start = next(c for c in config["head_start_ray_commands"] if "ray start" in c)
    system = json.loads(re.search(r"--system-config='([^']*)'", start).group(1))  # type: ignore[union-attr]
    assert system == {**RAY_SYSTEM_CONFIG, "health_check_period_ms": 1000,
                      "health_check_timeout_ms": 1000, "health_check_failure_threshold": 3,
                      "health_check_initial_delay_ms": 0}
    assert "ESTARTER_NODE_DEATH_GRACE=10" in start
    assert re.search(r"ESTARTER_SHARED_STORAGE=1\s+\S*estarter up", head)
    mounts = " ".join(config["worker_setup_commands"])
    assert "$RAY_HEAD_IP:/var/lib/estarter /var/lib/estarter" in mounts
