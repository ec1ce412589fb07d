"""Integration tests: one local Ray for the whole session, and a runtime per test in
both modes (local, without Ray; ray, through the actors)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from estarter.runtime import Runtime


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    import ray

    from actors.options import RAY_SYSTEM_CONFIG

    ray.init(address="local", namespace="estarter", include_dashboard=False,
             _system_config=RAY_SYSTEM_CONFIG,
             configure_logging=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(params=["local", "ray"])
def runtime(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Runtime]:
    """A fresh runtime with its own ESTARTER_HOME, in each mode."""
    local = request.param == "local"
    if not local:
        request.getfixturevalue("ray_session")
    rt = Runtime.start(local=local, home=tmp_path / "home")
    try:
        yield rt
    finally:
        rt.shutdown()
