"""DESIGN targets 5 and 2, on an embedded local Ray (one machine).

5. Density: 100 trivial apps at once (each connects, answers one call, sleeps).
   - supervisor memory: median USS of a supervisor worker vs an idle Ray actor's
     worker: <= 1.2x;
   - time until all 100 have answered a call vs starting 100 idle Ray actors:
     <= 1.3x (issue 15), with where the time of one launch goes (medians over the
     100: waiting for a launch slot, ``Runtime.launch`` in the kernel and the
     supervisor actor, spawn to the interpreter's first line, first line to the
     answered call) and the CPU the Ray session used until then, per app (both
     sides are CPU-bound here, and the CPU varies less than the time on a shared host);
   - memory of it all (supervisors plus apps) vs 100 idle Ray actors;
   - the same burst with 20 apps (reference rows: time and CPU per app): at 100,
     Ray's idle workers take most of the 2 cores by the end of either burst, which
     magnifies any difference in what a launch costs; at 20 they do not yet.
   - opt-in (``ESTARTER_BENCH_300=1``): the same with 300 apps, memory <= 1.15x,
     5 launches in flight (16 made the last launches wait past the driver's 120 s
     call). Memory is guarded: the run does not start if 300 apps at the 100-app
     run's MemAvailable drop per app would leave less than ``ESTARTER_BENCH_MIN_FREE_GB``
     (default 2) available, launches stop when the drop measured so far says so, and
     the run is given up if MemAvailable falls under 3/4 of it; launching is also
     bounded in time (``ESTARTER_BENCH_300_LAUNCH_SECONDS``, default 1500). A figure
     whose apps were not all up is "not measured" with the reason and the numbers;
     when launching stopped short, the apps up then are measured against as many
     idle actors, as a reference row. Every app launched is stopped in all cases.
   Also the idle runtime: processes and USS of Ray plus an idle estarter vs Ray alone.
2. Throughput: 8 apps calling ``system.ping`` at once, one call in flight each, for
   a fixed window; total calls/s vs raw Ray with 8 caller actors each calling its
   own echo actor the same way (n:n): >= 0.7x. Reported as time per call (the
   inverse), so the report's "lower is better" rule applies: <= 1/0.7 = 1.43x.
   The n:1 figure (8 callers, one echo actor, like 8 apps and one kernel) is shown
   for reference.

Run: ``python -m benchmarks cluster``.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from benchmarks.bench_native import write_app
from benchmarks.common import (
    APPS_PART,
    IDLE_ACTORS,
    OTHER,
    RAY_OWN,
    SERVICES,
    SUPERVISORS,
    Burst,
    TreeCpu,
    tree_uss,
    uss,
    wait_until,
)
from estarter.errors import EstarterError

Report = Callable[[str, float, float, "float | None", str], None]
MIB = 1024 * 1024
GIB = 1024 * MIB
APPS = 100
BIG = 300  # the opt-in memory run
# A burst small enough that Ray's idle workers do not yet weigh on the machine: each
# idle Ray worker costs ~1.8% of a core here (its 10 ms signal-check loop and gRPC
# polls), so 100 of them take most of the 2 cores and slow the end of either burst
# by more than the launches themselves; 20 take a third of one.
SMALL = 20
IN_FLIGHT = 16  # launches at once for the 100 apps (the profile's "launch slot" wait)
# For the 300: each launch waits for Ray to start a worker, CPU-bound beside the idle
# supervisors; with 16 in flight, past ~250 apps one waited past the driver's 120 s.
BIG_IN_FLIGHT = 5
KEEP_FREE = float(os.environ.get("ESTARTER_BENCH_MIN_FREE_GB", "2")) * GIB
FLOOR = 0.75 * KEEP_FREE  # MemAvailable under this at any time: the run is given up
LEARN = 20  # apps up before a run's own MemAvailable drop per app counts
LAUNCH_BUDGET = float(os.environ.get("ESTARTER_BENCH_300_LAUNCH_SECONDS", "1500"))
FIGURES: dict[str, float | None] = {
    "idle runtime (up, no apps)": None,
    "target 2: 8 apps ping at once": round(1 / 0.7, 2),
    "target 5: supervisor USS (median) vs idle Ray actor": 1.2,
    f"{APPS} apps at once: all answered a call vs {APPS} idle actors up": 1.3,
    f"{BIG} apps: supervisors + apps USS vs {BIG} idle actors": 1.15,
}
CALLERS = 8
WINDOW = 3.0  # seconds of calls, all callers at once

DENSITY_APP = """
import time
first_line = time.time()
import json
from sdk import EStarterClient
client = EStarterClient.connect()
client.ui.notify("up", json.dumps([first_line, time.time()]))  # its one answered call
time.sleep(3600)  # past the measurement: launching 300 apps here took over 10 minutes
"""

# The window starts when the bench says so (a "go" file in the app's appdata, read
# through its read-only mount), after every caller is up: on a loaded machine the
# callers start late, and a start time fixed in advance saw some of them miss it.
PING_APP = """
import json, os, time
from sdk import EStarterClient
client = EStarterClient.connect()
for _ in range(200):
    client.call("system.ping")
client.ui.notify("ready", "")
while not os.path.exists("/appdata/go"):
    time.sleep(0.01)
start_at = float(open("/appdata/go").read())
while time.time() < start_at:
    time.sleep(0.001)
n, end = 0, start_at + WINDOW
while time.time() < end:
    client.call("system.ping")
    n += 1
client.ui.notify("calls", json.dumps(n))
"""


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    wait_until(predicate, timeout, what, 0.1)


def _count(rt: Any, title: str) -> int:
    return sum(1 for n in rt.notifications(10 * BIG) if n["title"] == title)


def _session_processes() -> list[int]:
    """This driver's process tree: the embedded Ray (GCS, raylet, agents, workers)."""
    try:
        return [p.pid for p in psutil.Process().children(recursive=True)]
    except psutil.Error:
        return []


# -- raw Ray baselines ----------------------------------------------------------------


def _idle_actors(n: int) -> tuple[float, list[int], dict[str, float]]:
    """Start ``n`` idle actors at once: (seconds until all answered, their USS, CPU
    seconds the Ray session used meanwhile, by part: ``TreeCpu.parts``)."""
    import ray

    @ray.remote(num_cpus=0)
    class Idle:
        def pid(self) -> int:
            return os.getpid()

    free0 = _settled_memory()
    cpu = TreeCpu()
    t0 = time.monotonic()
    actors = [Idle.remote() for _ in range(n)]  # type: ignore[attr-defined]
    pids = ray.get([a.pid.remote() for a in actors], timeout=600)
    elapsed = time.monotonic() - t0
    used = cpu.parts()
    time.sleep(1.0)  # let the workers settle after start-up, as for the apps
    print(f"{n} idle actors: MemAvailable {_gib(free0)} -> {_gib(_available())}: "
          f"{(free0 - _available()) / n / MIB:.1f} MiB per actor", flush=True)
    sizes = [uss(p) for p in pids]
    for a in actors:
        ray.kill(a)
    return elapsed, [u for u in sizes if u], used


def _raw_calls_per_second(n: int, shared: bool) -> float:
    """n caller actors, one sync call in flight each, for WINDOW seconds at once."""
    import ray

    @ray.remote(num_cpus=0)
    class Echo:
        def ping(self) -> dict[str, Any]:
            return {"pong": True, "time": time.time()}

    @ray.remote(num_cpus=0)
    class Caller:
        def __init__(self, target: Any) -> None:
            self.target = target

        def warm(self) -> None:
            for _ in range(200):
                ray.get(self.target.ping.remote())

        def run(self, start_at: float, window: float) -> int:
            while time.time() < start_at:
                time.sleep(0.001)
            count, end = 0, start_at + window
            while time.time() < end:
                ray.get(self.target.ping.remote())
                count += 1
            return count

    echoes = [Echo.remote() for _ in range(1 if shared else n)]  # type: ignore[attr-defined]
    callers = [Caller.remote(echoes[0 if shared else i])  # type: ignore[attr-defined]
               for i in range(n)]
    # Every caller is up and warm before the window is set: on a loaded machine a
    # start time fixed in advance saw callers start after their window (0 calls).
    ray.get([c.warm.remote() for c in callers], timeout=300)
    start_at = time.time() + 1.0
    counts = ray.get([c.run.remote(start_at, WINDOW) for c in callers], timeout=300)
    for a in echoes + callers:
        ray.kill(a)
    return sum(counts) / WINDOW


# -- estarter ---------------------------------------------------------------------------


class LowMemory(RuntimeError):
    pass


def _available() -> int:
    return int(psutil.virtual_memory().available)


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def _settled_memory(timeout: float = 60.0) -> int:
    """MemAvailable once it holds still (within 32 MiB for 3 s): the workers of the
    actors and apps stopped just before exit over some seconds, and a drop measured
    from while they go is too small."""
    last, still, deadline = _available(), 0, time.monotonic() + timeout
    while still < 3 and time.monotonic() < deadline:
        time.sleep(1.0)
        now = _available()
        still = still + 1 if abs(now - last) < 32 * MIB else 0
        last = now
    return last


class MemoryWatch:
    """MemAvailable over a run, sampled every 0.5 s by a thread: the lowest seen, and
    ``check()`` raising LowMemory once it fell under FLOOR."""

    def __init__(self) -> None:
        self.start = self.lowest = _available()
        self.low = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.lowest = min(self.lowest, _available())
            if self.lowest < FLOOR:
                self.low.set()

    def check(self) -> None:
        if self.low.is_set():
            raise LowMemory(f"MemAvailable fell to {_gib(self.lowest)} (under "
                            f"{_gib(FLOOR)}): given up before the machine runs out")


def _density(rt: Any, root: Path, report: Report, apps: int = APPS,
             memory_target: float | None = None, in_flight: int = IN_FLIGHT,
             prior: float | None = None) -> float | None:
    """``apps`` apps at once; the figures; the MemAvailable drop per app (bytes) with
    them all up, or None. ``prior``: a drop per app measured before (the 100-app run),
    to tell before starting whether ``apps`` apps fit in memory."""
    memory_name = f"{apps} apps: supervisors + apps USS vs {apps} idle actors"
    small_name = (f"{apps} apps at once ({in_flight} launching): all answered a call vs "
                  f"{apps} idle actors up (ref)")
    names = ([small_name] if apps < APPS else [memory_name] if apps != APPS else
             ["target 5: supervisor USS (median) vs idle Ray actor",
              f"{APPS} apps at once: all answered a call vs {APPS} idle actors up",
              memory_name])
    targets = {memory_name: memory_target,
               f"{APPS} apps at once: all answered a call vs {APPS} idle actors up": 1.3,
               "target 5: supervisor USS (median) vs idle Ray actor": 1.2}

    said: list[str] = []

    def not_measured(why: str) -> None:
        print(f"{apps} apps: not measured: {why}", flush=True)
        unmeasured = getattr(report, "unmeasured", None)
        if unmeasured is not None and not said:
            for name in names:
                unmeasured(name, targets.get(name), why)
        said.append(why)

    free0 = _settled_memory()
    if prior and free0 - prior * apps < KEEP_FREE:
        not_measured(f"not started: {apps} apps would need ~{_gib(prior * apps)} at "
                     f"{prior / MIB:.0f} MiB each (MemAvailable drop per app with {APPS} "
                     f"up), {_gib(free0)} available, {_gib(KEEP_FREE)} to keep free")
        return None
    ids = [f"dense{apps}-{i:03d}" for i in range(apps)]
    folders = [write_app(root, app_id, DENSITY_APP) for app_id in ids]
    called: dict[str, tuple[float, float]] = {}
    cpu = TreeCpu()
    t0 = time.monotonic()
    w0 = time.time()

    def guard() -> str | None:
        """Why not to launch one more app now, if so."""
        free, n = _available(), len(burst.up)
        if watch.low.is_set() or free < FLOOR:
            return f"MemAvailable {_gib(min(free, watch.lowest))}, under {_gib(FLOOR)}"
        per = max(prior or 0.0, (free0 - free) / n if n >= LEARN else 0.0)
        if per and free - per * (apps - n) < KEEP_FREE:
            return (f"{apps - n} more apps would need ~{_gib(per * (apps - n))} at "
                    f"{per / MIB:.0f} MiB each (MemAvailable {_gib(free0)} -> {_gib(free)} "
                    f"with {n} launched), {_gib(KEEP_FREE)} to keep free")
        if apps != APPS and time.monotonic() - t0 > LAUNCH_BUDGET:
            return f"{LAUNCH_BUDGET:.0f} s of launching (ESTARTER_BENCH_300_LAUNCH_SECONDS)"
        return None

    def launched(app_id: str, began: float, returned: float) -> None:
        called[app_id] = (began, returned)
        if apps != APPS and len(called) % 50 == 0:
            print(f"{apps} apps: {len(called)} launched in {time.monotonic() - t0:.0f} s, "
                  f"MemAvailable {_gib(_available())} (from {_gib(free0)}), load "
                  f"{os.getloadavg()[0]:.1f}", flush=True)

    burst = Burst(rt, in_flight, before=guard, after=launched, name=f"{apps} apps")
    with MemoryWatch() as watch:
        try:
            burst.run(folders)
            wanted = set(burst.up)
            short = burst.short or (f"{len(burst.failed)} launches failed, e.g. "
                                    f"{next(iter(burst.failed.items()))}"
                                    if burst.failed else None)
            if short:  # not the figures of `apps` apps; those up are measured, as (ref)
                not_measured(short)
                if not wanted:
                    return None
            n = len(wanted)

            def all_up() -> bool:
                watch.check()
                return len(_ups(rt, wanted)) >= n

            _wait(all_up, 600 + 3 * n, f"{n} apps answering")
            ours_start = time.monotonic() - t0
            ours_cpu = cpu.parts()
            time.sleep(1.0)  # same settling as for the idle actors
            free1 = _available()
            drop = (free0 - free1) / n
            print(f"{apps} apps: MemAvailable {_gib(free0)} -> {_gib(free1)} with {n} up: "
                  f"{drop / MIB:.1f} MiB per app (lowest {_gib(watch.lowest)}; "
                  f"{burst.timeouts} launch timeouts)", flush=True)
            sup_uss, app_uss, profile = [], [], []
            ups = _ups(rt, wanted)
            missing: list[str] = []
            ended: list[str] = []
            for app_id in sorted(wanted):
                watch.check()
                try:
                    info = rt.info(app_id)
                    if info.get("exit") is not None:
                        ended.append(f"{app_id}: {info['exit']}")
                        continue
                    host = info["host"]
                    pid = host["pid"]
                    sup = psutil.Process(pid).ppid()
                except (EstarterError, KeyError, TypeError, psutil.Error) as exc:
                    missing.append(f"{app_id}: not measured: {exc!r}")
                    continue
                sup_uss.append(uss(sup))
                app_uss.append(tree_uss(pid))
                try:
                    first_line, answered = json.loads(ups[app_id])
                    began, returned = called[app_id]
                    spawned = float(host.get("startedAt") or info["startedAt"])
                    profile.append((began - w0, returned - began, first_line - spawned,
                                    answered - first_line))
                except (KeyError, TypeError, ValueError) as exc:
                    missing.append(f"{app_id}: {exc!r}")
            if missing:
                print(f"profile: {len(missing)} apps without timings or memory, e.g. "
                      f"{missing[0]}", flush=True)
            if ended:  # the figures would be of fewer apps than they say
                not_measured(f"{len(ended)} of {n} apps ended before their memory was "
                             f"read, e.g. {ended[0]}")
                return None
        except LowMemory as exc:
            not_measured(f"{exc}; {len(burst.up)} apps were up")
            return None
        finally:
            stop_s = burst.stop_all()
    if not sup_uss:
        not_measured(f"no app could be read, e.g. {missing[:1]}")
        return None
    measured = len(sup_uss)
    base_start, idle_uss, base_cpu = _idle_actors(n)
    idle = statistics.median(idle_uss)
    total = (sum(sup_uss) + sum(app_uss)) / MIB
    if short:
        report(f"{n} of {apps} apps up (launching stopped): supervisors + apps USS vs "
               f"{measured} idle actors (ref)", total, idle * measured / MIB, None, "MiB")
        return drop
    if apps < APPS:  # the small burst: what a launch costs before Ray's idle workers add up
        report(small_name, ours_start, base_start, None, "s")
        report(f"  {apps} apps: CPU the Ray session used until then, per app vs per idle "
               "actor (ref)", sum(ours_cpu.values()) / n, sum(base_cpu.values()) / n,
               None, "CPU-s")
        return drop
    if apps != APPS:
        report(memory_name + ("" if measured == apps else f" ({measured} read)"),
               total, idle * measured / MIB, memory_target, "MiB")
        report(f"{apps} apps at once ({in_flight} launching): all answered a call vs "
               f"{apps} idle actors up (ref)", ours_start, base_start, None, "s")
        return drop
    report("target 5: supervisor USS (median) vs idle Ray actor", statistics.median(sup_uss)
           / MIB, idle / MIB, 1.2, "MiB")
    report(f"{APPS} apps at once: all answered a call vs {APPS} idle actors up",
           ours_start, base_start, 1.3, "s")
    report(f"  {APPS} apps: CPU the Ray session used until then, per app vs per idle actor",
           sum(ours_cpu.values()) / n, sum(base_cpu.values()) / n, None, "CPU-s")
    _cpu_profile(ours_cpu, base_cpu, n, report)
    steps = (f"waiting for a launch slot ({in_flight} launching at once)",
             "Runtime.launch: kernel, supervisor actor, cgroups, spawn",
             "spawn to first line: launcher, bwrap, interpreter",
             "first line to answered call: SDK import, connect, ui.notify")
    for k, step in enumerate(steps):
        if profile:
            report(f"  {APPS} apps profile, median per app: {step}",
                   statistics.median(p[k] for p in profile), base_start, None, "s")
    report(memory_name + ("" if measured == apps else f" ({measured} read)"), total,
           idle * measured / MIB, memory_target, "MiB")
    report(f"{APPS} apps: one app's process tree USS (median), stop all: {stop_s:.1f} s",
           statistics.median(app_uss) / MIB, idle / MIB, None, "MiB")
    return drop


def _cpu_profile(ours: dict[str, float], base: dict[str, float], n: int,
                 report: Report) -> None:
    """Where the CPU of the two bursts went, per app / per idle actor (reference
    rows). A part both have is set against the idle run's same part; a part only
    ours has, against all the idle run used per actor."""
    twins = {SUPERVISORS: IDLE_ACTORS, RAY_OWN: RAY_OWN}
    total = sum(base.values()) / n
    for part in (SUPERVISORS, SERVICES, APPS_PART, RAY_OWN, OTHER):
        twin = twins.get(part)
        against = base.get(twin, 0.0) / n if twin else total
        label = f"the idle run's {twin}" if twin else "all of it per idle actor"
        report(f"  {APPS} apps CPU per app: {part} vs {label}",
               ours.get(part, 0.0) / n, against, None, "CPU-s")


def _ups(rt: Any, ids: set[str]) -> dict[str, str]:
    """The "up" notes of the apps ``ids``: app id -> message."""
    return {n["appId"]: n["message"] for n in rt.notifications(10 * BIG)
            if n["title"] == "up" and n.get("appId") in ids}


def _idle_runtime(ray_alone: tuple[int, int], report: Report) -> None:
    """Processes and USS of the driver's tree with an idle runtime vs Ray alone."""
    time.sleep(2.0)  # the runtime's actors settle
    pids = _session_processes()
    total = sum(uss(p) for p in pids)
    report(f"idle runtime (up, no apps): {len(pids)} processes vs {ray_alone[0]} of Ray "
           f"alone, USS", total / MIB, ray_alone[1] / MIB, None, "MiB")


def _throughput(rt: Any, root: Path, report: Report) -> None:
    src = PING_APP.replace("WINDOW", repr(WINDOW))
    folders = [write_app(root, f"pinger{i}", src) for i in range(CALLERS)]
    for folder in folders:
        rt.launch(folder)
    _wait(lambda: _count(rt, "ready") >= CALLERS, 300, "callers warmed up")
    start_at = time.time() + 1.0
    for i in range(CALLERS):
        go = rt.home / "vfs" / "appdata" / f"pinger{i}" / "go"
        go.parent.mkdir(parents=True, exist_ok=True)
        # Whole or absent: a caller polling for the file must never read it empty.
        go.with_suffix(".tmp").write_text(repr(start_at))
        go.with_suffix(".tmp").rename(go)
    _wait(lambda: _count(rt, "calls") >= CALLERS, 120, "callers reporting")
    total = sum(int(n["message"]) for n in rt.notifications(1000) if n["title"] == "calls")
    if total == 0:  # every caller started after its window (a loaded machine)
        unmeasured = getattr(report, "unmeasured", None)
        if unmeasured is not None:
            unmeasured("target 2: 8 apps ping at once", round(1 / 0.7, 2),
                       "no caller made a call within its window")
        return
    ours = total / WINDOW
    nn = _raw_calls_per_second(CALLERS, shared=False)
    n1 = _raw_calls_per_second(CALLERS, shared=True)
    if not nn or not n1:
        unmeasured = getattr(report, "unmeasured", None)
        if unmeasured is not None:
            unmeasured("target 2: 8 apps ping at once", round(1 / 0.7, 2),
                       "the raw Ray callers made no call within their window")
        return
    report(f"target 2: 8 apps ping at once ({ours:.0f}/s) vs raw Ray n:n ({nn:.0f}/s), "
           f"per call", 1e6 / ours, 1e6 / nn, round(1 / 0.7, 2), "us")
    report(f"8 apps ping at once vs raw Ray n:1 ({n1:.0f}/s), per call (reference)",
           1e6 / ours, 1e6 / n1, None, "us")


def run(report: Report) -> None:
    from actors import ray_api
    from estarter.runtime import Runtime

    if os.environ.get("ESTARTER_BENCH_300"):
        # A node advertises memory / 96 MiB app slots (placement.slots_for_node): about
        # 245 on a 24 GiB machine, fewer than the 300 apps whose memory is measured.
        # An operator raises it the same way.
        os.environ.setdefault("ESTARTER_APP_SLOTS", str(BIG + APPS))
    ray_api.init()  # embedded local Ray with app slots, unless one is up already
    time.sleep(2.0)
    ray_pids = _session_processes()
    ray_alone = (len(ray_pids), sum(uss(p) for p in ray_pids))
    failed: list[BaseException] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rt = Runtime.start(home=root / "home")
        try:
            drop: list[float | None] = [None]  # MemAvailable per app, 100-app run

            def hundred() -> None:
                drop[0] = _density(rt, root, report)

            parts: list[Callable[[], object]] = [
                lambda: _idle_runtime(ray_alone, report),
                lambda: _throughput(rt, root, report),
                lambda: _density(rt, root, report, SMALL), hundred]
            if os.environ.get("ESTARTER_BENCH_300"):
                parts.append(lambda: _density(rt, root, report, BIG, 1.15, BIG_IN_FLIGHT,
                                              drop[0]))
            else:
                unmeasured = getattr(report, "unmeasured", None)
                if unmeasured is not None:
                    unmeasured(f"{BIG} apps: supervisors + apps USS vs {BIG} idle actors",
                               1.15, "opt-in: set ESTARTER_BENCH_300=1")
            for part in parts:  # one failing part leaves the others' figures
                try:
                    part()
                except Exception as exc:
                    traceback.print_exc()
                    failed.append(exc)
        finally:
            rt.shutdown()
    if failed:
        raise failed[0]


if __name__ == "__main__":
    def _print(name: str, ours: float, base: float, target: float | None, unit: str) -> None:
        print(f"{name}: ours {ours:.3f} {unit}, baseline {base:.3f} {unit}, "
              f"ratio {ours / base:.2f}x (target {target}x)")

    run(_print)
