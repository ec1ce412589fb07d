"""An app's cgroups made when its launch is announced, before its supervisor's start.

The mkdirs leave the launch's path: they are made as soon as the kernel has
resolved the app (``Spawner.expect_launch``). On cgroup v2 a no-op move starts right
after (``Cgroups.prime``): a move into a cgroup waits an RCU grace period (6-28 ms
here) unless another move happened just before, and it holds the cgroup mutex while
it waits, which every mkdir of a cgroup needs too (``cgroupfs.prime_join``); its
grace period passes while the kernel records the launch and sends it, and the
launcher's join finds it passed. On v1 the launcher's join does not wait
(``CgroupsV1.join_files``), so nothing is primed. ``prepare`` takes them for the
app's first launch here. Once the launch is over the kernel has them
dropped if nobody took them (it failed first, or another supervisor started it);
failing that message, they are removed after PREMADE_SECONDS.
"""

from __future__ import annotations

import atexit
import os
import secrets
import threading
import time
from pathlib import Path

from .cgroup_v1 import CgroupsV1
from .cgroup_v2 import CgroupsV2
from .cgroupfs import Cgroups
from .detect import HostFacts

PREMADE_SECONDS = 10.0

_lock = threading.Lock()
_made: dict[tuple[Path, str], tuple[float, Cgroups]] = {}  # (cgroup root, app id) ->


def new_cgroups(facts: HostFacts, backend: str, app_id: str) -> Cgroups | None:
    """The (not yet created) cgroups of a launch of ``app_id`` by this process."""
    leaf = f"{app_id}-{os.getpid()}-{secrets.token_hex(4)}"
    if backend == "cgroup-v2" and facts.v2_root is not None:
        return CgroupsV2(facts.v2_root, leaf)
    if backend == "cgroup-v1" and facts.v1_mounts:
        return CgroupsV1(facts.v1_mounts, leaf)
    return None


def premake(facts: HostFacts, app_id: str) -> bool:
    """Make ``app_id``'s cgroups now and start the no-op move; False if there are
    none to make here (no cgroups, or mkdir failed: the launch makes its own)."""
    cgroups = new_cgroups(facts, facts.backend, app_id)
    if cgroups is None:
        return False
    try:
        cgroups.create()
    except OSError:
        cgroups.remove()
        return False
    cgroups.prime()
    key = (facts.cgroup_root, app_id)
    with _lock:
        old = _made.pop(key, None)
        _made[key] = (time.monotonic(), cgroups)
    if old is not None:
        old[1].remove()
    timer = threading.Timer(PREMADE_SECONDS, _expire, (key, cgroups))
    timer.daemon = True
    timer.start()
    return True


def take(facts: HostFacts, backend: str, app_id: str) -> Cgroups | None:
    """``app_id``'s premade cgroups, if this process made them for ``backend`` and
    they have not expired; they are the caller's from now on."""
    with _lock:
        entry = _made.pop((facts.cgroup_root, app_id), None)
    if entry is None:
        return None
    made, cgroups = entry
    if cgroups.name != backend or time.monotonic() - made > PREMADE_SECONDS:
        cgroups.remove()
        return None
    return cgroups


def drop(cgroup_root: Path, app_id: str) -> None:
    """Remove ``app_id``'s premade cgroups, if no launch took them."""
    with _lock:
        entry = _made.pop((cgroup_root, app_id), None)
    if entry is not None:
        entry[1].remove()


@atexit.register
def _drop_all() -> None:
    """A process that ends cleanly (a refused ``estarter run``) leaves none behind."""
    with _lock:
        left = [cgroups for _, cgroups in _made.values()]
        _made.clear()
    for cgroups in left:
        cgroups.remove()


def _expire(key: tuple[Path, str], cgroups: Cgroups) -> None:
    with _lock:
        if key not in _made or _made[key][1] is not cgroups:
            return  # taken (or replaced): not ours to remove
        del _made[key]
    cgroups.remove()
