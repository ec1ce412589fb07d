"""The unit-test fixture really refuses to start Ray."""

from __future__ import annotations

import pytest
import ray


def test_ray_cannot_start_in_unit_tests() -> None:
    # (The integration tests' session Ray may already be up when this runs: the point
    # is that a unit test cannot start one, whatever else is running.)
    with pytest.raises(RuntimeError, match="must not start Ray"):
        ray.init(address="local")
