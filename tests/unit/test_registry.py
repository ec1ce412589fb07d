"""The per-app registry: JSON values, TTL, caps, isolation, persistence."""

from __future__ import annotations

from pathlib import Path

import pytest

from estarter.errors import InvalidParams, QuotaExceeded
from estarter.kernel.registry import MAX_VALUE_BYTES, Registry


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_set_get_list_delete(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "k.db")
    reg.set("a", "theme", {"dark": True, "size": [1, 2]})
    reg.set("a", "th%", 1)
    reg.set("a", "other", "x")
    assert reg.get("a", "theme") == {"value": {"dark": True, "size": [1, 2]}, "found": True}
    assert reg.get("a", "missing") == {"value": None, "found": False}
    assert reg.list("a", "th") == {"keys": ["th%", "theme"]}
    assert reg.list("a", "th%") == {"keys": ["th%"]}  # % is not a wildcard
    assert reg.list("a") == {"keys": ["other", "th%", "theme"]}
    assert reg.delete("a", "theme") == {"deleted": True}
    assert reg.delete("a", "theme") == {"deleted": False}


def test_apps_are_isolated_and_values_persist(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "k.db")
    reg.set("a", "k", 1)
    assert reg.get("b", "k")["found"] is False
    reg.close()
    assert Registry(tmp_path / "k.db").get("a", "k")["value"] == 1


def test_ttl_expires(tmp_path: Path) -> None:
    clock = FakeClock()
    reg = Registry(tmp_path / "k.db", clock=clock)
    reg.set("a", "k", "v", ttl=10)
    reg.set("a", "forever", "v")
    clock.now += 9.9
    assert reg.get("a", "k")["value"] == "v"
    clock.now += 0.2
    assert reg.get("a", "k")["found"] is False
    assert reg.list("a") == {"keys": ["forever"]}
    with pytest.raises(InvalidParams):
        reg.set("a", "k", "v", ttl=0)


def test_value_cap_and_bad_input(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "k.db")
    reg.set("a", "big", "x" * (MAX_VALUE_BYTES - 2))  # the quotes make it exactly the cap
    with pytest.raises(QuotaExceeded, match="capped"):
        reg.set("a", "big", "x" * (MAX_VALUE_BYTES - 1))
    with pytest.raises(InvalidParams):
        reg.set("a", "nan", float("nan"))
    with pytest.raises(InvalidParams):
        reg.set("a", "", 1)
    with pytest.raises(InvalidParams):
        reg.set("a", "x" * 1000, 1)
