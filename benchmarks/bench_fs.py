"""Target 7: a 1 KB ``fs.write`` plus ``fs.read`` round trip from a hosted app, against
a raw Ray actor call doing the same write (temp file, fsync, rename, fsync of the
folder) and read, in the same run.

The app's fs.* calls go from its supervisor straight to the VFS actor
(``actors/vfs.py``): one actor call each, like the baseline's one.

    python -m benchmarks.bench_fs
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Report = Callable[[str, float, float, "float | None", str], None]
ROUNDS = 300
WARMUP = 30

APP = textwrap.dedent(f"""
    import json, time
    from sdk import EStarterClient
    client = EStarterClient.connect()
    body = "x" * 1024
    samples = []
    for i in range({ROUNDS + WARMUP}):
        t0 = time.perf_counter()
        client.call("fs.write", {{"path": "/appdata/bench.txt", "text": body}})
        client.call("fs.read", {{"path": "/appdata/bench.txt"}})
        samples.append(time.perf_counter() - t0)
    samples = sorted(samples[{WARMUP}:])
    client.ui.notify("fs", json.dumps(samples[len(samples) // 2]))
""")


def _atomic_write_read(folder: str, data: bytes) -> bytes:
    """What the VFS does for one write and one read, without the API around it."""
    path = os.path.join(folder, "bench.txt")
    tmp = os.path.join(folder, ".tmp-bench")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    with open(path, "rb") as fh:
        return fh.read()


def _raw_actor_median(folder: str) -> float:
    import ray

    @ray.remote(num_cpus=0)
    class Raw:
        def write_read(self, folder: str, data: bytes) -> bytes:
            return _atomic_write_read(folder, data)

    actor = Raw.remote()  # type: ignore[attr-defined]  # ray.remote makes .remote
    data = b"x" * 1024
    try:
        for _ in range(WARMUP):
            ray.get(actor.write_read.remote(folder, data))
        samples = []
        for _ in range(ROUNDS):
            t0 = time.perf_counter()
            ray.get(actor.write_read.remote(folder, data))
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples)
    finally:
        ray.kill(actor)


def _app_median(rt: Any, folder: Path) -> float:
    handle = rt.launch(folder, grants=["fs.write"])
    info = handle.wait(timeout=300)
    if info is None or info.code != 0:
        raise RuntimeError(f"bench app ended badly: {info}")
    for note in rt.notifications(1000):
        if note["appId"] == "bench-fs" and note["title"] == "fs":
            return float(json.loads(note["message"]))
    raise RuntimeError("bench app reported nothing")


def run(report: Report) -> None:
    from actors import ray_api
    from estarter.runtime import Runtime

    ray_api.init()  # the embedded local Ray users get, unless one is up already
    with tempfile.TemporaryDirectory(prefix="estarter-bench-fs-") as tmp:
        root = Path(tmp)
        folder = root / "bench-fs"
        folder.mkdir()
        (folder / "app.py").write_text(APP)
        (folder / "manifest.json").write_text(json.dumps(
            {"id": "bench-fs", "runtime": "python", "entry": "app.py",
             "permissions": ["basic", "fs.write"]}))
        raw_dir = root / "raw"
        raw_dir.mkdir()
        rt = Runtime.start(home=root / "home")
        try:
            ours = _app_median(rt, folder)
        finally:
            rt.shutdown()
        base = _raw_actor_median(str(raw_dir))
        report("target 7: hosted 1 KB fs.write + fs.read vs raw Ray actor call",
               ours * 1e3, base * 1e3, 2.5, "ms")


if __name__ == "__main__":
    def _print(name: str, ours: float, base: float, target: float | None, unit: str) -> None:
        print(f"{name}: ours {ours:.3f} {unit}, baseline {base:.3f} {unit}, "
              f"ratio {ours / base:.2f}x (target {target}x)")

    run(_print)
