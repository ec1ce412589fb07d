"""pytest plugin for app authors: ``estarter_runtime`` gives a test a fresh runtime.

Local mode (no Ray) by default; mark a test ``@pytest.mark.estarter_ray`` to get a
runtime on Ray instead (the caller's Ray must be initialised, or an embedded one
is started).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "estarter_ray: run the estarter_runtime fixture on Ray")


@pytest.fixture
def estarter_runtime(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[object]:
    from estarter.runtime import Runtime

    on_ray = request.node.get_closest_marker("estarter_ray") is not None
    rt = Runtime.start(local=not on_ray, home=tmp_path / "estarter-home")
    try:
        yield rt
    finally:
        rt.shutdown()
