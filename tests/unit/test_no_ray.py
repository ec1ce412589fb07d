"""The unit-test fixture really refuses to start Ray."""

from __future__ import annotations

import pytest
import ray


def test_ray_cannot_start_in_unit_tests() -> None:
    with pytest.raises(RuntimeError, match="must not start Ray"):
        ray.init(address="local")
    assert not ray.is_initialized()
