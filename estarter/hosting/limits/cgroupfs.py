"""Small cgroupfs helpers shared by the v1 and v2 backends (no policy knowledge)."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for annotations: policy and plan import nothing from here
    from ...policy import SandboxPolicy
    from .plan import Outcome

ESTARTER = "estarter"
KILL_SECONDS = 2.0
RMDIR_SECONDS = 2.0
STALE_SECONDS = 60.0  # an empty cgroup this old was left by a lost supervisor


def write(path: Path, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


def read(path: Path) -> str:
    with open(path) as fh:
        return fh.read()


def read_int(path: Path, default: int = 0) -> int:
    try:
        return int(read(path).split()[0])
    except (OSError, ValueError, IndexError):
        return default


def keyed(path: Path) -> dict[str, int]:
    """Parse a flat keyed file (``memory.events``, ``memory.oom_control``, ``cpu.stat``)."""
    out: dict[str, int] = {}
    try:
        text = read(path)
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def procs(dirs: Iterable[Path]) -> list[int]:
    """Pids listed in the ``cgroup.procs`` of any of ``dirs`` (gone dirs count as empty)."""
    pids: set[int] = set()
    for d in dirs:
        try:
            pids.update(int(x) for x in read(d / "cgroup.procs").split())
        except (OSError, ValueError):
            continue
    return sorted(pids)


def kill_all(dirs: list[Path], timeout: float = KILL_SECONDS) -> bool:
    """SIGKILL every process in ``dirs`` until none is listed. True if they emptied.

    A fork between our read and our kill lands in the same cgroup, so we loop; the
    pids controller bounds how many there can be. Killed zombies leave the list when
    they exit, before they are reaped, so the one owner of ``wait`` is not needed here.
    """
    deadline = time.monotonic() + timeout
    while True:
        pids = procs(dirs)
        if not pids:
            return True
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)


def remove(dirs: list[Path], timeout: float = RMDIR_SECONDS) -> list[Path]:
    """rmdir each cgroup, retrying while the kernel reports it busy. Returns the leftovers."""
    left: list[Path] = []
    deadline = time.monotonic() + timeout
    for d in dirs:
        while True:
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                # EBUSY: exiting tasks still charged; anything else will not improve.
                if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                    left.append(d)
                    break
                time.sleep(0.01)
    return left


LATE_RMDIR_SECONDS = 120.0


def remove_later(dirs: list[Path], timeout: float = LATE_RMDIR_SECONDS,
                 on_done: Callable[[list[Path]], None] | None = None) -> threading.Thread:
    """Keep trying to rmdir ``dirs`` in the background (backing off to 1 s) until
    they are gone or ``timeout`` passes; ``on_done`` gets what is still left.

    A cgroup stays busy while its exiting tasks are still charged, which on a loaded
    host outlasts the few seconds ``remove`` waits in line; without this it stayed
    until a launch 60 s later swept it."""
    def run() -> None:
        deadline = time.monotonic() + timeout
        pause = 0.05
        left, gave_up = list(dirs), list[Path]()
        while left and time.monotonic() < deadline:
            time.sleep(pause)
            pause = min(1.0, pause * 2)
            busy: list[Path] = []
            for d in left:
                try:
                    os.rmdir(d)
                except FileNotFoundError:
                    pass
                except OSError as exc:  # only EBUSY improves with time
                    (busy if exc.errno == errno.EBUSY else gave_up).append(d)
            left = busy
        if on_done is not None:
            on_done(left + gave_up)

    thread = threading.Thread(target=run, name="estarter-cgroup-reaper", daemon=True)
    thread.start()
    return thread


def sweep_stale(parents: Iterable[Path], now: float | None = None) -> list[Path]:
    """Remove empty ``estarter`` cgroups older than STALE_SECONDS; returns what went.

    Young empty cgroups are kept: another supervisor may be between mkdir and join.
    Cgroups holding processes are never touched here.
    """
    now = time.time() if now is None else now
    removed: list[Path] = []
    for parent in parents:
        try:
            children = [p for p in parent.iterdir() if p.is_dir()]
        except OSError:
            continue
        for child in children:
            try:
                age = now - child.stat().st_mtime
            except OSError:
                continue
            if age < STALE_SECONDS or procs([child]):
                continue
            try:
                os.rmdir(child)
                removed.append(child)
            except OSError:
                continue
    return removed


def own_cgroup(mount: Path, controller: str = "") -> Path | None:
    """This process's cgroup in the hierarchy mounted at ``mount``: a v1 hierarchy
    holding ``controller``, or (``controller`` "") the v2 one. None if not listed."""
    try:
        lines = read(Path("/proc/self/cgroup")).splitlines()
    except OSError:
        return None
    for line in lines:
        _, ctrls, path = line.split(":", 2)
        if ctrls == controller or controller in ctrls.split(","):
            return mount / path.lstrip("/")
    return None


def prime_join(procs_file: Path | None, tid: bool) -> None:
    """Start a no-op move into ``procs_file``'s cgroup (where we are), on a thread
    that ends with it: the launcher's join a few milliseconds later is then cheap.

    Any move into a cgroup takes the kernel's cgroup-wide threadgroup lock for
    writing; when no move happened just before, that waits an RCU grace period
    (6-28 ms here, measured by ``bench_native``). A move that starts while another
    waits shares its grace period, and one within about a grace period after finds
    it passed: measured here, a child's join fell from 9.2 ms to 2.3 ms (median of
    10) with this move started 5 ms before it. The move holds the cgroup mutex
    while it waits, so a mkdir of a cgroup waits with it. v1 writes the thread's own
    id into ``tasks`` (only that thread moves); v2 the pid into ``cgroup.procs``.
    Errors are ignored: the launcher's join is what enforces the limits."""
    if procs_file is None:
        return

    def move() -> None:
        with contextlib.suppress(OSError):
            fd = os.open(procs_file, os.O_WRONLY)  # no O_CREAT: a cgroup file or nothing
            try:
                os.write(fd, str(threading.get_native_id() if tid else os.getpid()).encode())
            finally:
                os.close(fd)

    threading.Thread(target=move, name="estarter-prime-join", daemon=True).start()


_swept: dict[tuple[Path, ...], float] = {}  # parents -> when this process last swept them


def sweep_stale_later(parents: Iterable[Path]) -> None:
    """``sweep_stale`` on a thread of its own, at most once per STALE_SECONDS per
    process: it reads every estarter cgroup of the node, which in a burst of launches
    is a cost that grows with the apps already running, and no launch needs it done."""
    key, now = tuple(parents), time.monotonic()
    if now - _swept.get(key, -STALE_SECONDS) < STALE_SECONDS:
        return
    _swept[key] = now
    threading.Thread(target=sweep_stale, args=(key,), name="estarter-sweep-cgroups",
                     daemon=True).start()


class Cgroups:
    """One app's cgroups. Subclasses know the file names of their cgroup version."""

    name = "cgroup"

    def __init__(self, leaf: str) -> None:
        self.leaf = leaf  # <appid>-<unique>
        self.dirs: list[Path] = []  # what we created, in creation order
        self.values: dict[str, str] = {}  # file -> value written (for report())

    def parents(self) -> list[Path]:
        """The ``estarter`` folders our cgroups live in (swept for stale leftovers)."""
        raise NotImplementedError

    def create(self) -> None:
        raise NotImplementedError

    def prime(self) -> None:
        """Make the launcher's coming join into these cgroups cheap (``prime_join``)."""
        raise NotImplementedError

    def apply(self, policy: SandboxPolicy, out: Outcome) -> set[str]:
        """Write the limits this version can hold; returns the manifest keys handled."""
        raise NotImplementedError

    def join_files(self) -> list[str]:
        """The files the launcher joins these cgroups by (``cgroup.procs``: its pid)."""
        return self.procs_files()

    def procs_files(self) -> list[str]:
        """The ``cgroup.procs`` files, which list the processes (the orphan guard's)."""
        return [str(d / "cgroup.procs") for d in self.dirs]

    def set(self, path: Path, value: str) -> None:
        write(path, value)
        self.values[str(path)] = value

    def oom_kills(self) -> int:
        raise NotImplementedError

    def cpu_usage_ns(self) -> int | None:
        raise NotImplementedError

    def pids(self) -> list[int]:
        return procs(self.dirs)

    def kill(self) -> None:
        kill_all(self.dirs)

    def remove(self) -> list[Path]:
        return remove(list(reversed(self.dirs)))
