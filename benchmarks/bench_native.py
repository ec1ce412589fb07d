"""DESIGN targets 1 and 3, for hosted native (python-runtime) apps on a local Ray.

1. API round trip of a hosted app (``system.ping`` from inside the app, through its
   supervisor actor to the kernel actor and back) vs a raw Ray actor call from the
   driver to an actor with an empty method: <= 1.2x (issue 15), both sides
   measured in alternating rounds. Shown beside it, the part of the gap that is
   not estarter's: the same raw call made from a worker's thread (where a
   supervisor calls from), the kernel actor's ``call`` for ``system.ping`` made from
   there, and the shape's floor (a bare app on a pipe to a bare relay in a worker
   that makes that call), each vs the raw call from the driver; the hosted ping vs
   that floor (estarter's own part); and the app's side of the path without Ray
   (the SDK, the pipes, the process host, the call answered at once in the host)
   vs a bare Python pipe echo of the same frames.
3. Launch to first answered API call (from ``Runtime.launch`` until the app holds
   the answer of its first call) vs a bare spawn of the same script that exchanges
   one frame with its parent over a pipe: <= 1.5x. Shown under it, medians per
   stage on both sides (the launch call; its return to the app's first line; SDK
   import and connect; the first call), and an OS cost in it: a move of a process
   into a cgroup waits for an RCU grace period when no other move happened just
   before, unless it moves only the calling thread (how the launcher joins v1
   hierarchies); measured as no-op moves of this process into its own cgroup,
   cold (after 100 ms without one): the launcher's way vs a pid into
   cgroup.procs on v1, cold vs warm (right after another) on v2.

Run: ``python -m benchmarks.bench_native``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Report = Callable[[str, float, float, "float | None", str], None]
FIGURES: dict[str, float | None] = {
    "target 1: hosted system.ping vs raw Ray actor call": 1.2,
    "target 3: launch to first answered call vs bare spawn + echo": 1.5,
}
PINGS = 2000
# Launches per side of target 3 (a median of 7 moved by ~10% between runs here).
LAUNCHES = 15
# Those of the paced reference rows (2.5 s apart each).
SHAPED_LAUNCHES = 7

# SETTLE: seconds the app waits before its calls. A launch takes the pool's warm
# supervisor, and the pool starts its replacement a second later (a Ray worker's
# start, ~0.5 CPU-s here): calls timed then measured that start, not the path.
PING_APP = """
import json, time
from sdk import EStarterClient
client = EStarterClient.connect()
time.sleep(SETTLE)
for _ in range(200):
    client.call("system.ping")
samples = []
for _ in range(N):
    t0 = time.perf_counter()
    client.call("system.ping")
    samples.append(time.perf_counter() - t0)
samples.sort()
client.ui.notify("result", json.dumps({"median": samples[len(samples) // 2]}))
"""

# The same script serves both sides of target 3: hosted, it answers through estarter;
# with BASELINE set, it exchanges one frame with the parent that spawned it.
FIRST_CALL_APP = """
import time
t_first = time.time()
import os, sys, json
from sdk import EStarterClient
if os.environ.get("BASELINE"):
    from sdk._wire import encode_frame, read_frame
    t_conn = time.time()
    out = os.fdopen(1, "wb", buffering=0)
    out.write(encode_frame({"jsonrpc": "2.0", "id": 1, "method": "system.ping"}))
    read_frame(sys.stdin.buffer)
    os.write(2, json.dumps([t_first, t_conn, time.time()]).encode())
    sys.exit(0)
client = EStarterClient.connect()
t_conn = time.time()
client.call("system.ping")
t = time.time()
client.ui.notify("first", json.dumps([t_first, t_conn, t]))
"""


def write_app(root: Path, app_id: str, source: str) -> Path:
    """A python-runtime app folder running ``source`` (shared by the benchmarks)."""
    folder = root / app_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "app.py").write_text(textwrap.dedent(source))
    (folder / "manifest.json").write_text(json.dumps(
        {"id": app_id, "runtime": "python", "entry": "app.py"}))
    return folder


class _RayProbes:
    """The Ray-side rows of target 1, each measured in one block of calls to one
    actor (calls alternating between two actors wake each from idle and cost
    0.2-0.4 ms more here, which is the machine's, not the path's):

    - ``raw``: the baseline, a driver's call to an empty method of a plain actor;
    - ``plain``: the same call made from a thread of a worker process, where a
      supervisor's reader calls from;
    - ``kernel``: the kernel actor's ``call`` for ``system.ping`` from there;
    - ``shape``: the shape with none of estarter's code around the kernel: a bare
      Python child writing the ping frames on its stdout and timing each answer
      (``PIPE_ECHO``), and a bare relay in a worker thread that reads each frame,
      makes the ``kernel.call``, and writes a fixed answer frame back. What a
      hosted ping costs at the least, as long as an app is a process on a pipe to a
      supervisor actor that sends each call to the kernel actor."""

    def __init__(self) -> None:
        import ray

        from actors.options import KERNEL_NAME

        @ray.remote(num_cpus=0)
        class Echo:
            def ping(self) -> bool:
                return True

        @ray.remote(num_cpus=0, max_concurrency=8)  # type: ignore[call-overload]
        class Caller:
            def run(self, kernel: Any, echo: Any, n: int, pythonpath: str) -> dict[str, float]:
                import threading

                from estarter.protocol.kernel_wire import encode_call

                payload = encode_call("bench-floor", "system.ping", None)
                out: dict[str, float] = {}

                def work() -> None:
                    out["plain"] = _block(lambda: ray.get(echo.ping.remote()), n)
                    out["kernel"] = _block(lambda: ray.get(kernel.call.remote(payload)), n)
                    out["shape"] = _relay(lambda: ray.get(kernel.call.remote(payload)), n,
                                          pythonpath)

                thread = threading.Thread(target=work)
                thread.start()
                thread.join()
                return out

        self._ray = ray
        self.kernel = ray.get_actor(KERNEL_NAME)
        self.echo = Echo.remote()  # type: ignore[attr-defined]
        self.caller = Caller.remote()  # type: ignore[attr-defined]
        ray.get(self.echo.ping.remote())

    def measure(self, n: int) -> dict[str, float]:
        """Median seconds of each row, ``n`` calls each."""
        ray = self._ray
        raw = _block(lambda: ray.get(self.echo.ping.remote()), n)
        pythonpath = str(Path(__file__).resolve().parents[1])
        rows = ray.get(self.caller.run.remote(self.kernel, self.echo, n, pythonpath),
                       timeout=600)
        return {"raw": raw, **rows}

    def close(self) -> None:
        self._ray.kill(self.caller)
        self._ray.kill(self.echo)


def _block(call: Callable[[], Any], n: int) -> float:
    """Median seconds of ``n`` calls, after 200 not timed."""
    for _ in range(200):
        call()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def _relay(call: Callable[[], Any], n: int, pythonpath: str) -> float:
    """The median the bare child (``PIPE_ECHO``) times, each of its frames answered
    after one ``call``: the shape's floor of target 1 (see ``_RayProbes``)."""
    from sdk._wire import encode_frame, read_frame

    child = subprocess.Popen(
        [sys.executable, "-c", PIPE_ECHO.replace("range(N)", f"range({n + 200})")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": pythonpath})
    try:
        assert child.stdout is not None and child.stdin is not None
        for _ in range(n + 200):
            frame = read_frame(child.stdout)
            if frame is None:
                raise RuntimeError("the bare app ended before its last frame")
            call()
            child.stdin.write(encode_frame({"jsonrpc": "2.0", "id": json.loads(frame)["id"],
                                            "result": {"pong": True, "time": 0.0}}))
            child.stdin.flush()
        _, err = child.communicate(timeout=60)
        return float(json.loads(err))
    finally:
        child.kill()
        child.wait()


# The baseline of the pipe path: a Python parent answering JSON-RPC frames on a pipe.
PIPE_ECHO = """
import json, os, sys, time
from sdk._wire import encode_frame, read_frame
out, samples = os.fdopen(1, "wb", buffering=0), []
for i in range(N):
    t0 = time.perf_counter()
    out.write(encode_frame({"jsonrpc": "2.0", "id": i, "method": "system.ping"}))
    read_frame(sys.stdin.buffer)
    samples.append(time.perf_counter() - t0)
samples = sorted(samples[200:])
os.write(2, json.dumps(samples[len(samples) // 2]).encode())
"""


def pipe_path(root: Path, n: int) -> tuple[float, float]:
    """Median seconds of (hosted ``system.ping`` through the SDK and the process
    host, answered at once in this process instead of by the kernel; the same frames
    echoed by a bare Python parent over a pipe). No Ray: what target 1 pays for the
    app's side of the path, against the least a pipe round trip costs."""
    import concurrent.futures

    from estarter.hosting.base import HostContext
    from estarter.hosting.process_host import ProcessHost
    from estarter.manifest import AppManifest
    from estarter.policy import SandboxPolicy
    from sdk._wire import encode_frame, read_frame

    folder = write_app(root, "bench-pipe", PING_APP.replace("N)", f"{n})")
                       .replace("SETTLE", "0"))
    noted: list[Any] = []

    def answer(method: str, params: Any) -> concurrent.futures.Future[Any]:
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        if method == "ui.notify":
            noted.append(params)
        done.set_result({"pong": True, "time": 0.0})
        return done

    manifest = AppManifest.model_validate({"id": "bench-pipe", "runtime": "python",
                                           "entry": "app.py"})
    ctx = HostContext(api=answer, log=lambda level, msg: None, on_exit=lambda info: None,
                      home=root / "pipe-home", appdata=root / "pipe-home" / "appdata")
    with ProcessHost(SandboxPolicy.from_manifest(manifest, folder), ctx) as host:
        host.start()
        host.wait(300)
    hosted = float(json.loads(noted[-1]["message"])["median"])
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    echo = subprocess.Popen([sys.executable, "-c", PIPE_ECHO.replace("range(N)",
                                                                      f"range({n + 200})")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    try:
        assert echo.stdout is not None and echo.stdin is not None
        for _ in range(n + 200):
            frame = read_frame(echo.stdout)
            if frame is None:
                raise RuntimeError("the pipe echo ended before its last frame")
            msg = json.loads(frame)
            echo.stdin.write(encode_frame({"jsonrpc": "2.0", "id": msg["id"],
                                           "result": {"pong": True, "time": 0.0}}))
            echo.stdin.flush()
        _, err = echo.communicate(timeout=60)
        return hosted, float(json.loads(err))
    finally:
        echo.kill()
        echo.wait()


def _bare_first_call(folder: Path) -> list[float]:
    """Seconds from the spawn: [spawn returned, first line, connected, answered]."""
    from sdk._wire import encode_frame, read_frame

    env = {"PATH": "/usr/bin:/bin", "BASELINE": "1"}
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-E", "-s", "-B", str(folder / "app.py")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=folder)
    spawned = time.time()
    try:
        assert proc.stdout is not None and proc.stdin is not None
        read_frame(proc.stdout)
        proc.stdin.write(encode_frame({"jsonrpc": "2.0", "id": 1, "result": {}}))
        proc.stdin.flush()
        _, err = proc.communicate(timeout=30)
        marks = json.loads(err.decode().strip().splitlines()[-1])
        return [spawned - t0, *(m - t0 for m in marks)]
    finally:
        proc.kill()
        proc.wait()


def _unused_api(method: str, params: Any) -> Any:
    raise AssertionError("only the sandbox's argv is made from this context")


class _BareLaunch:
    """Target 3's floor through the shape, with none of estarter's code around it:
    the driver calls a bare "kernel" actor, which calls a warm bare "supervisor"
    actor, which spawns the app in the same bwrap sandbox as ours (its namespaces
    and mounts; no launcher, cgroups, rlimits or seccomp filter) running the same
    script as the bare baseline; its first frame is relayed to the real kernel
    actor's ``call`` and the answer written back. No manifest, grants, record,
    placement or plan on the way, and the SDK's bare frame in place of a connect.
    ``None`` from ``start``, and ``failed`` says why, where this host has no bwrap
    or a bare launch failed (no more are tried)."""

    def __init__(self, root: Path, folder: Path) -> None:
        import ray

        from actors.options import KERNEL_NAME
        from estarter.hosting import python_app
        from estarter.hosting.base import HostContext
        from estarter.hosting.limits import detect
        from estarter.hosting.limits.sandbox import bwrap_argv
        from estarter.manifest import AppManifest
        from estarter.paths import app_zones
        from estarter.policy import SandboxPolicy

        @ray.remote(num_cpus=0, max_concurrency=4)  # type: ignore[call-overload]
        class BareSupervisor:
            def __init__(self) -> None:
                self.marks: Any = None
                self.done: Any = None

            def start(self, argv: list[str], env: dict[str, str], cwd: str,
                      kernel: Any) -> bool:
                import threading

                from estarter.protocol.kernel_wire import encode_call
                from sdk._wire import encode_frame, read_frame

                child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, env=env, cwd=cwd)
                self.done = threading.Event()

                def relay() -> None:
                    try:
                        assert child.stdout is not None and child.stdin is not None
                        frame = read_frame(child.stdout)
                        if frame is not None:
                            ray.get(kernel.call.remote(encode_call("bench-bare", "system.ping",
                                                                   None)))
                            child.stdin.write(encode_frame({"jsonrpc": "2.0", "id": 1,
                                                            "result": {}}))
                            child.stdin.flush()
                        _, err = child.communicate(timeout=30)
                        self.marks = json.loads(err.decode().strip().splitlines()[-1])
                    except Exception as exc:  # reported by ``result``
                        self.marks = repr(exc)
                        child.kill()
                        child.wait()
                    finally:
                        self.done.set()

                threading.Thread(target=relay, daemon=True).start()
                return True

            def result(self) -> Any:
                self.done.wait(60)
                return self.marks

        @ray.remote(num_cpus=0, max_concurrency=4)  # type: ignore[call-overload]
        class BareKernel:
            def launch(self, sup: Any, argv: list[str], env: dict[str, str], cwd: str,
                       kernel: Any) -> bool:
                return bool(ray.get(sup.start.remote(argv, env, cwd, kernel)))

        self._ray = ray
        facts = detect()
        self.argv: list[str] | None = None
        self.failed: str | None = None  # why the floor is not measured
        if facts.bwrap is not None:
            manifest = AppManifest.model_validate(
                json.loads((folder / "manifest.json").read_text()))
            policy = SandboxPolicy.from_manifest(manifest, folder)
            home = root / "bare-home"
            zones = app_zones(home, manifest.id)
            for path in zones.values():
                path.mkdir(parents=True, exist_ok=True)
            ctx = HostContext(api=_unused_api, log=lambda level, msg: None,
                              on_exit=lambda info: None, home=home,
                              appdata=zones["appdata"], zones=zones)
            self.cwd = str(zones["appdata"])
            self.argv = [*bwrap_argv(facts.bwrap, policy, ctx, os.geteuid()),
                         *python_app.command(policy.entry, policy.app_dir, policy.args)]
        self.kernel = ray.get_actor(KERNEL_NAME)
        self.bare_kernel = BareKernel.remote()  # type: ignore[attr-defined]
        self.sup = BareSupervisor.remote()  # type: ignore[attr-defined]
        ray.get([self.bare_kernel.__ray_ready__.remote(), self.sup.__ray_ready__.remote()])

    def start(self) -> list[float] | None:
        """Seconds from the driver's call: [launch returned, first line, connected,
        answered], as ``_bare_first_call`` gives them."""
        if self.argv is None:
            self.failed = "no bwrap on this host"
            return None
        ray = self._ray
        env = {"PATH": "/usr/bin:/bin", "BASELINE": "1"}
        try:
            t0 = time.time()
            ray.get(self.bare_kernel.launch.remote(self.sup, self.argv, env, self.cwd,
                                                   self.kernel), timeout=120)
            returned = time.time()
            marks = ray.get(self.sup.result.remote(), timeout=120)
        except Exception as exc:
            marks = repr(exc)
        if not isinstance(marks, list):  # no more tries: the rows say why
            self.failed = f"the bare launch failed: {marks}"[:300]
            return None
        return [returned - t0, *(m - t0 for m in marks)]

    def close(self) -> None:
        self._ray.kill(self.sup)
        self._ray.kill(self.bare_kernel)


STAGES = ("launch call returned (ours: Runtime.launch; bare: Popen)",
          "launch returned to the app's first line",
          "first line to connected (SDK import, connect)",
          "first call answered")


def _stage_rows(ours: list[list[float]], base: list[list[float]],
                report: Report, against: str = "") -> None:
    """Median duration of each stage (marks are seconds from the launch)."""
    def took(marks: list[float], k: int) -> float:
        return marks[k] - (marks[k - 1] if k else 0.0)

    for k, stage in enumerate(STAGES):
        label = f"  target 3 stage: {stage}" + (f", {against}" if against else "")
        report(label, statistics.median(took(m, k) for m in ours) * 1e3,
               statistics.median(took(m, k) for m in base) * 1e3, None, "ms")


def _shape_rows(ours: list[list[float]], base: list[list[float]],
                shape: list[list[float]], report: Report, failed: str | None) -> None:
    """Target 3's split: the shape's floor (``_BareLaunch``) vs the bare spawn, and
    ours vs that floor (estarter's own part), with the floor's stages."""
    name = "  target 3, the shape's floor: a bare launch through two actors into bwrap"
    if failed is not None or not shape:
        if hasattr(report, "unmeasured"):
            report.unmeasured(name, None, failed or "no bare launch ran")
        return
    floor = statistics.median(m[-1] for m in shape) * 1e3
    report(f"{name} vs bare", floor, statistics.median(m[-1] for m in base) * 1e3, None,
           "ms")
    report("  target 3, estarter's part: ours vs the shape's floor",
           statistics.median(m[-1] for m in ours) * 1e3, floor, None, "ms")
    _stage_rows(ours, shape, report, "ours vs the shape's floor")


def cgroup_join_cost(samples: int = 7) -> tuple[float, float, str] | None:
    """Median seconds of a cold no-op move (after 100 ms without one) of this
    process's thread into its own cgroup as the launcher joins (v1: "0" into
    ``tasks``, the calling thread, which Linux moves without the threadgroup lock),
    and of a move that takes that lock (this pid into ``cgroup.procs``: an RCU grace
    period when no move happened just before; on v2 the launcher's own way, then
    measured warm, right after another). With a label of what the two are. None
    where this process cannot write its cgroup (no cgroups, not root)."""
    from estarter.hosting.limits import detect
    from estarter.hosting.limits.cgroupfs import own_cgroup

    facts = detect(probe_sandbox=False)
    v1 = facts.v2_root is None
    mount, controller = ((facts.v1_mounts.get("pids"), "pids") if v1
                         else (facts.v2_root, ""))
    own = own_cgroup(mount, controller) if mount is not None else None
    if own is None or not own.is_dir():
        return None
    procs, pid = own / "cgroup.procs", str(os.getpid())

    def move(path: Path, who: str) -> float:
        t0 = time.perf_counter()
        with open(path, "w") as fh:
            fh.write(who)
        return time.perf_counter() - t0

    ours, base = [], []
    try:
        if pid not in procs.read_text().split():
            return None
        for _ in range(samples):
            time.sleep(0.1)
            if v1:
                ours.append(move(own / "tasks", "0"))
                time.sleep(0.1)
                base.append(move(procs, pid))
            else:
                ours.append(move(procs, pid))
                base.append(move(procs, pid))
    except OSError:
        return None
    label = ('the launcher\'s join (v1: "0" into tasks), cold, vs a pid into cgroup.procs, '
             'cold' if v1 else "cgroup join, cold vs warm")
    return statistics.median(ours), statistics.median(base), label


def _result(rt: Any, app_id: str, title: str) -> str:
    for note in reversed(rt.notifications(1000)):
        if note["appId"] == app_id and note["title"] == title:
            return str(note["message"])
    raise RuntimeError(f"{app_id} reported nothing")


# Target 1 alternates its sides in rounds: this VM's speed for Ray calls moves by
# 30-50% within a minute, so blocks of one side then the other compared phases.
T1_ROUNDS = 5
SETTLE_SECONDS = 3.0  # see PING_APP and _target1


def _target1(rt: Any, root: Path, report: Report) -> None:
    """Target 1 and its split: each round measures every row of ``_RayProbes`` and
    then launches the ping app (``PINGS / T1_ROUNDS`` timed calls), each side after
    the runtime settled (``SETTLE_SECONDS``: no supervisor starting or ending
    beside the timed calls); each figure is the median of its rounds' medians."""
    n = PINGS // T1_ROUNDS
    ping = write_app(root, "bench-ping", PING_APP.replace("N)", f"{n})")
                     .replace("SETTLE", repr(SETTLE_SECONDS)))
    rows: dict[str, list[float]] = {}
    failed = ""
    probes = _RayProbes()
    try:
        for _ in range(T1_ROUNDS):
            # The last round's app has ended: its supervisor is reset or killed
            # (a Ray worker's exit) just then. Not beside the baseline's calls.
            time.sleep(SETTLE_SECONDS)
            if not failed:
                try:
                    for key, value in probes.measure(n).items():
                        rows.setdefault(key, []).append(value)
                except Exception as exc:  # the baseline's rows say so; the others go on
                    failed = f"a round failed: {exc!r}"[:300]
            rt.launch(ping).wait(timeout=300)
            rows.setdefault("hosted", []).append(
                json.loads(_result(rt, "bench-ping", "result"))["median"])
    finally:
        probes.close()
    ms = {key: statistics.median(values) * 1e3 for key, values in rows.items()}
    if "raw" not in ms:
        if hasattr(report, "unmeasured"):
            report.unmeasured("target 1: hosted system.ping vs raw Ray actor call", 1.2,
                              f"the raw Ray call was not measured ({failed})")
    else:
        report("target 1: hosted system.ping vs raw Ray actor call", ms["hosted"],
               ms["raw"], 1.2, "ms")
        report("target 1, Ray's part: raw call from a worker thread vs from driver",
               ms["plain"], ms["raw"], None, "ms")
        report("target 1, floor: kernel.call(system.ping) from a worker thread",
               ms["kernel"], ms["raw"], None, "ms")
        report("target 1, the shape's floor: a bare app on a pipe to a bare relay that "
               "makes the kernel.call", ms["shape"], ms["raw"], None, "ms")
        report("target 1, estarter's part: hosted ping vs the shape's floor", ms["hosted"],
               ms["shape"], None, "ms")
    hosted, echo = pipe_path(root, PINGS)
    report("target 1, the app's side: hosted ping answered in the host vs "
           "a bare pipe echo", hosted * 1e3, echo * 1e3, None, "ms")


def run(report: Report) -> None:
    from actors import ray_api
    from estarter.runtime import Runtime

    ray_api.init()  # the embedded local Ray users get, unless one is up already
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rt = Runtime.start(home=root / "home")
        try:
            _target1(rt, root, report)

            first = write_app(root, "bench-first", FIRST_CALL_APP)
            ours_m, base_m, shape_m = [], [], []
            shape = _BareLaunch(root, first)
            try:
                for _ in range(LAUNCHES):
                    t0 = time.time()
                    handle = rt.launch(first)
                    returned = time.time()
                    handle.wait(timeout=60)
                    marks = json.loads(_result(rt, "bench-first", "first"))
                    ours_m.append([returned - t0, *(m - t0 for m in marks)])
                    base_m.append(_bare_first_call(first))
                    if shape.failed is None:
                        floor = shape.start()
                        if floor is not None:
                            shape_m.append(floor)
            finally:
                shape.close()
            report("target 3: launch to first answered call vs bare spawn + echo",
                   statistics.median(m[-1] for m in ours_m) * 1e3,
                   statistics.median(m[-1] for m in base_m) * 1e3, 1.5, "ms")
            _stage_rows(ours_m, base_m, report)
            _shape_rows(ours_m, base_m, shape_m, report, shape.failed)
            join = cgroup_join_cost()
            name = "  target 3, the OS's part: cgroup join"
            if join is not None:
                report(f"{name}: {join[2]}", join[0] * 1e3, join[1] * 1e3, None, "ms")
            elif hasattr(report, "unmeasured"):
                report.unmeasured(name, None, "this process cannot move itself within "
                                  "its cgroup (no cgroups here, or not root)")
            bare = statistics.median(m[-1] for m in base_m)
            _shaped_launches(rt, root, bare, report)
        finally:
            rt.shutdown()


# Launches of an app with a memory request (as most apps have) take the warm
# supervisor of their request shape (actors.pool); it is replaced ~1.5 s after a take.
SHAPED_PAUSE = 2.5


def _shaped_launches(rt: Any, root: Path, bare: float, report: Report) -> None:
    """Target 3's figure for an app with ``memoryLimitMb``: its first launch (the
    pool's idle supervisor lent to it, holding its memory), then later ones (a warm
    supervisor of its shape), alternating with launches
    of the same app without requests at the same pace (idle processes wake slowly on
    this VM, so the pace matters): reference rows, against the bare spawn + echo."""
    plain = root / "bench-first"
    folder = write_app(root, "bench-shaped", FIRST_CALL_APP)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "memoryLimitMb": 128}))

    def launch(app: Path, app_id: str) -> float:
        time.sleep(SHAPED_PAUSE)
        t0 = time.time()
        rt.launch(app).wait(timeout=60)
        return float(json.loads(_result(rt, app_id, "first"))[-1] - t0)

    first = launch(folder, "bench-shaped")
    shaped, same_pace = [], []
    for _ in range(SHAPED_LAUNCHES):
        shaped.append(launch(folder, "bench-shaped"))
        same_pace.append(launch(plain, "bench-first"))
    report("  target 3, memoryLimitMb app: first launch of its shape vs bare (ref)",
           first * 1e3, bare * 1e3, None, "ms")
    report(f"  target 3, memoryLimitMb app: later launches, {SHAPED_PAUSE:g} s apart, vs "
           "bare (ref)", statistics.median(shaped) * 1e3, bare * 1e3, None, "ms")
    report("  target 3, app without requests at that pace vs bare (ref)",
           statistics.median(same_pace) * 1e3, bare * 1e3, None, "ms")

if __name__ == "__main__":
    def _print(name: str, ours: float, base: float, target: float | None, unit: str) -> None:
        print(f"{name}: ours {ours:.3f} {unit}, baseline {base:.3f} {unit}, "
              f"ratio {ours / base:.2f}x (target {target}x)")

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    run(_print)
