"""Unit tests run without Ray: starting it here is a bug in the test."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture(autouse=True)
def _forbid_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    ray = sys.modules.get("ray")
    if ray is None:
        return  # nothing imported Ray, so nothing can start it through the module

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("unit tests must not start Ray; write an integration test")

    monkeypatch.setattr(ray, "init", refuse)
