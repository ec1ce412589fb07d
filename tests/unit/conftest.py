"""Unit tests run without Ray: starting it here is a bug in the test."""

from __future__ import annotations

import pytest
import ray


@pytest.fixture(autouse=True)
def _forbid_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("unit tests must not start Ray; write an integration test")

    monkeypatch.setattr(ray, "init", refuse)

