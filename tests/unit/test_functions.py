"""Sandboxed functions: limits, the outcome decoding, the plain-data unpickler, and real
sandboxed children in local mode (no Ray)."""

from __future__ import annotations

import os
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from estarter.errors import ApiTimeout, InvalidParams, ManifestError
from estarter.functions import (
    FunctionCrashed,
    FunctionError,
    FunctionLimitExceeded,
    check_limits,
    decode,
    function_policy,
)
from estarter.runtime import Runtime

# -- limits ------------------------------------------------------------------------


def test_limits_take_manifest_keys_with_manifest_ranges() -> None:
    ok = {"memoryLimitMb": 64, "cpuQuota": 50, "maxRuntimeSeconds": 1.5,
          "maxProcesses": 4, "networkAllowed": True}
    assert check_limits(ok) == ok
    assert check_limits(None) == {}
    with pytest.raises(InvalidParams, match="diskQuotaMb: not a function limit") as bad:
        check_limits({"diskQuotaMb": 1})
    assert bad.value.data == {"key": "diskQuotaMb"}
    with pytest.raises(ManifestError, match="memoryLimitMb"):
        check_limits({"memoryLimitMb": -1})
    with pytest.raises(ManifestError, match="networkAllowed"):
        check_limits({"networkAllowed": "yes"})


def test_function_policy_is_an_app_with_no_permissions(tmp_path: Path) -> None:
    p = function_policy({"memoryLimitMb": 64, "cpuQuota": 20}, tmp_path)
    assert p.app_id.startswith("fn-") and p.sandboxed and not p.granted
    assert (p.memory_limit_bytes, p.cpu_quota_percent, p.network_allowed) == (
        64 * 1024 * 1024, 20, False)


# -- outcomes ----------------------------------------------------------------------


def ok(value: Any) -> dict[str, Any]:
    return {"status": "ok", "result": pickle.dumps(("ok", value), protocol=5)}


def test_decode_plain_values() -> None:
    import datetime
    import decimal

    value = {"a": [1, 2.5, None, True], "b": (b"x", "s"), "c": {1, 2}, "d": frozenset({3}),
             "e": complex(1, 2), "f": datetime.datetime(2020, 1, 2), "g": decimal.Decimal("1.5")}
    assert decode(ok(value)) == value


class Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo pwned",))


def test_decode_refuses_anything_but_plain_data() -> None:
    blob = pickle.dumps(("ok", Evil()), protocol=5)
    with pytest.raises(FunctionError, match=r"refused: posix\.system"):
        decode({"status": "ok", "result": blob})


def test_decode_errors_are_typed() -> None:
    raised = pickle.dumps(("error", "KeyError", "'k'", "Traceback ...\nKeyError: 'k'\n"))
    with pytest.raises(FunctionError, match="KeyError") as err:
        decode({"status": "ok", "result": raised})
    assert err.value.remote_type == "KeyError"
    assert err.value.remote_traceback.endswith("KeyError: 'k'\n")
    memory = pickle.dumps(("error", "MemoryError", "", ""))
    with pytest.raises(FunctionLimitExceeded):
        decode({"status": "ok", "result": memory})
    with pytest.raises(FunctionLimitExceeded, match="memory_limit") as over:
        decode({"status": "limit", "reason": "memory_limit", "detail": "exit code 137"})
    assert over.value.code == -32003  # a QuotaExceeded
    with pytest.raises(ApiTimeout):
        decode({"status": "timeout", "detail": "1 s"})
    with pytest.raises(FunctionCrashed, match="signal 11"):
        decode({"status": "crashed", "detail": "killed by signal 11"})


def test_errors_keep_their_data_across_pickling() -> None:
    err = FunctionError("ValueError: x", {"type": "ValueError", "traceback": "tb"})
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is FunctionError and back.remote_traceback == "tb"


# -- real children, local mode -----------------------------------------------------

needs_sandbox = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("bwrap") is None,
    reason="needs root (cgroups) and bubblewrap")


@pytest.fixture
def local_rt(tmp_path: Path) -> Iterator[Runtime]:
    rt = Runtime.start(local=True, home=tmp_path / "home")
    try:
        yield rt
    finally:
        rt.shutdown()


def cube(x: int) -> int:
    return x ** 3


def whoami() -> dict[str, Any]:
    import importlib.util
    import os

    return {"uid": os.getuid(), "shadow": os.path.exists("/etc/shadow"), "cwd": os.getcwd(),
            "estarter": importlib.util.find_spec("estarter") is not None}


def connect_out() -> str:
    import socket

    socket.create_connection(("192.0.2.1", 80), timeout=2)
    return "connected"


def grab(mb: int) -> int:
    block = bytearray(mb * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    return len(block)


@needs_sandbox
def test_local_submit_runs_sandboxed(local_rt: Runtime) -> None:
    assert local_rt.submit(cube, 3).result(timeout=30) == 27
    assert local_rt.submit(whoami).result(timeout=30) == {
        "uid": 65534, "shadow": False, "cwd": "/", "estarter": False}
    assert list(local_rt.map(cube, [1, 2, 3])) == [1, 8, 27]
    assert local_rt.submit(lambda a, b=0: a + b, 1, b=2).result(timeout=30) == 3


@needs_sandbox
def test_local_submit_typed_failures(local_rt: Runtime) -> None:
    with pytest.raises(FunctionError, match="OSError"):
        local_rt.submit(connect_out).result(timeout=30)  # no network by default
    with pytest.raises(FunctionLimitExceeded):
        local_rt.submit(grab, 256, limits={"memoryLimitMb": 32}).result(timeout=30)
    assert local_rt.submit(grab, 8, limits={"memoryLimitMb": 64}).result(timeout=30) > 0
    with pytest.raises(ApiTimeout):
        local_rt.submit(lambda: __import__("time").sleep(30),
                        limits={"maxRuntimeSeconds": 0.5}).result(timeout=30)
    with pytest.raises(FunctionCrashed, match="exit code 3"):
        local_rt.submit(lambda: os._exit(3)).result(timeout=30)
    with pytest.raises(InvalidParams):
        local_rt.submit(cube, 1, limits={"restart": "always"})
