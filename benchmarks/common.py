"""What several benchmarks need: memory of a process (tree), ending a simulated Ray
cluster so that the next module starts clean, and launching many apps at once."""

from __future__ import annotations

import concurrent.futures
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil


def uss(pid: int) -> int:
    """Unique set size of ``pid`` in bytes; 0 if it is gone or unreadable."""
    try:
        return int(psutil.Process(pid).memory_full_info().uss)
    except psutil.Error:
        return 0


def tree_uss(pid: int) -> int:
    """USS of ``pid`` and all its descendants."""
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return 0
    return sum(uss(p.pid) for p in procs)


# The parts of a Ray session's CPU that ``TreeCpu.parts`` tells apart, by what a
# process's command line says it is (Ray titles a worker ``ray::<actor class>``).
SUPERVISORS = "supervisor workers"
SERVICES = "kernel, VFS and permission actors"
APPS_PART = "the apps' processes (launcher, bwrap, app)"
IDLE_ACTORS = "idle actor workers"
RAY_OWN = "Ray's own processes (GCS, raylet, agents, idle workers)"
OTHER = "other (the benchmark's own children)"
_RAY_OWN = ("gcs_server", "raylet", "dashboard", "log_monitor", "runtime_env",
            "ray::IDLE", "monitor.py")


def _part(cmdline: str) -> str | None:
    """The part a process belongs to by its own command line; None: by its parent."""
    if "SupervisorShell" in cmdline or "estarter-sup-" in cmdline:
        return SUPERVISORS
    if any(k in cmdline for k in ("KernelShell", "VfsShell", "PermissionsShell")):
        return SERVICES
    if "ray::Idle" in cmdline:
        return IDLE_ACTORS
    if any(k in cmdline for k in _RAY_OWN) or cmdline.startswith("ray::"):
        return RAY_OWN
    return None


class TreeCpu:
    """CPU seconds used by this process's descendants (an embedded Ray: GCS, raylet,
    its workers and, through the supervisors, the apps) since this was made. A
    process alive then counts from then, a later one from its start, a child its
    parent reaped in the parent's children times; one that exited unreaped is lost.

    On these 2 cores a burst of launches is CPU-bound, so its wall time follows the
    CPU it needs and whatever else the host runs; the CPU it used is the steadier
    figure of the two. ``parts`` splits it by what each process is (the profile of
    a burst: how much is Ray's start of a worker, ours, the apps' or Ray's own)."""

    def __init__(self) -> None:
        self._base = {pid: cpu for pid, (cpu, _) in self._read().items()}

    @staticmethod
    def _read() -> dict[int, tuple[float, psutil.Process]]:
        out: dict[int, tuple[float, psutil.Process]] = {}
        try:
            procs = psutil.Process().children(recursive=True)
        except psutil.Error:
            return out
        for p in procs:
            try:
                t = p.cpu_times()
                out[p.pid] = (t.user + t.system + t.children_user + t.children_system, p)
            except psutil.Error:
                continue
        return out

    def seconds(self) -> float:
        return sum(self.parts().values())

    def parts(self) -> dict[str, float]:
        """CPU seconds since this was made, by part (the names above). An app's
        processes are those under a supervisor worker that are not Ray's."""
        now = self._read()
        own: dict[int, str | None] = {}
        for pid, (_, proc) in now.items():
            try:
                own[pid] = _part(" ".join(proc.cmdline()))
            except psutil.Error:
                own[pid] = None
        out: dict[str, float] = {}
        for pid, (cpu, proc) in now.items():
            part = own[pid]
            if part is None:
                part = OTHER
                try:
                    for parent in proc.parents():
                        if own.get(parent.pid) == SUPERVISORS:
                            part = APPS_PART
                            break
                except psutil.Error:
                    pass
            out[part] = out.get(part, 0.0) + cpu - self._base.get(pid, 0.0)
        return out


def end_simulated_cluster(cluster: Any, saved_env: dict[str, str | None]) -> None:
    """Disconnect, shut ``cluster`` (ray.cluster_utils) down, forget its address (a
    later plain ``ray.init()`` would try it) and put back the environment as it was."""
    import ray

    ray.shutdown()
    cluster.shutdown()
    try:
        from ray._private.utils import reset_ray_address  # type: ignore[attr-defined]

        reset_ray_address()
    except (ImportError, OSError):
        pass
    for key, value in saved_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def wait_until(predicate: Callable[[], bool], timeout: float, what: str,
               interval: float = 0.1) -> None:
    """Poll ``predicate`` every ``interval`` s; TimeoutError naming ``what`` after
    ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)


class Burst:
    """Launch many apps through a runtime, ``in_flight`` at once, and keep count.

    ``before()`` runs before every launch (retries too); a string it returns stops all
    further launching and is kept in ``short``. ``after(app_id, began, returned)`` runs
    after every launch the kernel accepted. A launch that raises ApiTimeout (the
    driver's 120 s call) may still complete in the kernel: once the burst is done,
    each such app's record is read (waiting while it is starting, up to ``settle`` s
    for them all) and only the apps that are really not running (ended, or not known
    to the kernel) are launched again, up to ``retries`` times; a relaunch that says
    Busy is read again the same way. Once launching stopped (``short``) a timed-out
    app is neither read nor relaunched: it counts as failed, and is stopped at the end.

    ``tried`` is every app a launch was asked for, recorded before the call: stop
    those at the end (:meth:`stop_all`), whatever happened in between."""

    def __init__(self, rt: Any, in_flight: int, *, before: Callable[[], str | None] | None = None,
                 after: Callable[[str, float, float], None] | None = None,
                 retries: int = 2, settle: float = 300.0, max_failed: int | None = None,
                 name: str = "bench") -> None:
        self.rt = rt
        self.in_flight = in_flight
        self.before = before
        self.after = after
        self.retries = retries
        self.settle = settle
        self.max_failed = max_failed
        self.name = name
        self.up: list[str] = []  # running: accepted by the kernel, or found running
        self.failed: dict[str, str] = {}  # app id -> why it is not running
        self.timeouts = 0  # launch calls that raised ApiTimeout
        self.short: str | None = None  # why launching stopped before every app was tried
        self.tried: list[str] = []
        self._total = 0
        self._lock = threading.Lock()

    def run(self, folders: list[Path]) -> None:
        """Launch the apps of ``folders`` (app id = folder name); return when each is
        running, failed or not tried (``short``)."""
        self._total = len(folders)
        by_id = {f.name: f for f in folders}
        unsure = self._launch(folders)
        attempts = 0
        while unsure:
            again: list[Path] = []
            deadline = time.monotonic() + self.settle  # for them all: read one by one
            for app_id in unsure:
                if self.short is not None:  # not relaunched: stopped at the end, unread
                    self.failed[app_id] = "launch timed out; launches stopped since"
                    continue
                state = self._state(app_id, deadline)
                if state == "running":
                    self._add_up(app_id)
                elif attempts >= self.retries or not state.startswith(("ended", "not known")):
                    self.failed[app_id] = f"launch timed out ({self.timeouts} so far), then {state}"
                else:
                    again.append(by_id[app_id])
            attempts += 1
            if again:
                print(f"{self.name}: launching {len(again)} again after a timeout: "
                      f"{', '.join(f.name for f in again[:5])}", flush=True)
            unsure = self._launch(again)

    def stop_all(self, grace: float = 0.5) -> float:
        """Stop every app tried (quietly: one that never ran has nothing to stop);
        seconds it took."""
        t0 = time.monotonic()

        def stop(app_id: str) -> None:
            try:
                self.rt.stop(app_id, grace=grace)
            except Exception:
                pass

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(stop, list(dict.fromkeys(self.tried))))
        return time.monotonic() - t0

    def _add_up(self, app_id: str) -> None:
        with self._lock:
            self.up.append(app_id)

    def _launch(self, folders: list[Path]) -> list[str]:
        """Launch ``folders``; the ids whose launch timed out or said Busy (unsure)."""
        from estarter.errors import ApiTimeout, Busy, EstarterError

        unsure: list[str] = []

        def one(folder: Path) -> None:
            app_id = folder.name
            if self.short is not None:
                return
            why = self.before() if self.before is not None else None
            if why is not None:
                self._stop_launching(why)
                return
            with self._lock:
                self.tried.append(app_id)
            began = time.time()
            try:
                self.rt.launch(folder)
            except (ApiTimeout, Busy) as exc:
                with self._lock:
                    unsure.append(app_id)
                    self.timeouts += isinstance(exc, ApiTimeout)
                print(f"{self.name}: launch of {app_id}: {type(exc).__name__}: {exc}",
                      flush=True)
                return
            except EstarterError as exc:
                with self._lock:
                    self.failed[app_id] = f"{type(exc).__name__}: {exc}"
                    many = self.max_failed is not None and len(self.failed) >= self.max_failed
                print(f"{self.name}: launch of {app_id} failed: {exc}", flush=True)
                if many:
                    self._stop_launching(f"{len(self.failed)} failed, the last: {exc}")
                return
            self._add_up(app_id)
            if self.after is not None:
                self.after(app_id, began, time.time())

        if folders:
            with concurrent.futures.ThreadPoolExecutor(self.in_flight) as pool:
                try:
                    list(pool.map(one, folders))
                except BaseException:  # ^C: the pool would go on with the queued ones
                    self.short = self.short or "interrupted"
                    raise
        return unsure

    def _stop_launching(self, why: str) -> None:
        """No launch after this one; the first reason is the one kept."""
        if self.short is None:
            self.short = f"launches stopped at {len(self.up)} of {self._total} apps: {why}"
            print(f"{self.name}: {self.short}", flush=True)

    def _state(self, app_id: str, deadline: float) -> str:
        """"running", or what else the kernel says of an app whose launch timed out:
        "ended (<reason>)", "not known" (the call may never have reached it), "still
        starting" or "unreadable" at ``deadline`` (time.monotonic)."""
        from estarter.errors import EstarterError, NotFound

        state = "unreadable"
        while True:
            try:
                info = self.rt.info(app_id)
            except NotFound:
                return "not known"
            except EstarterError as exc:  # the info call timed out too, under load
                state = f"unreadable ({type(exc).__name__})"
            else:
                if info.get("exit") is not None:
                    return f"ended ({(info['exit'] or {}).get('reason')})"
                if info.get("state") == "running":
                    return "running"
                state = f"still {info.get('state')}"
            if time.monotonic() > deadline:
                return state
            time.sleep(1.0)
