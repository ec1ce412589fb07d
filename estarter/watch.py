"""What ``estarter run --watch`` needs besides a runtime: seeing an app folder change,
and rebuilding the app from its sources (the manifest's ``build`` command).

Polling, standard library only: a walk with ``os.scandir`` comparing (mtime, size)
per file. An app folder is small, so a walk costs well under a millisecond; a kernel
watcher (inotify through a dependency) would buy latency the debounce throws away
anyway, and polling behaves the same on every filesystem (bind mounts, NFS, overlay).
The clock and the sleep are passed in, so tests drive the debounce without waiting.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Never a reason to rerun: version control, editors' and tools' own files, caches.
IGNORED_NAMES = frozenset({"__pycache__", "node_modules", ".git", ".hg", ".svn",
                           ".pytest_cache", ".mypy_cache", ".ruff_cache", ".venv"})
IGNORED_SUFFIXES = (".pyc", ".pyo", ".swp", ".swx", ".tmp", "~")
MAX_FILES = 20000  # a folder this big is not an app folder: stop walking it
DEBOUNCE = 0.3
POLL = 0.2
BUILD_TIMEOUT = 300.0

Snapshot = dict[str, tuple[int, int]]


def ignored(name: str) -> bool:
    """Dotfiles, caches and editors' swap and backup files."""
    return name.startswith(".") or name in IGNORED_NAMES or name.endswith(IGNORED_SUFFIXES)


def snapshot(folder: Path, limit: int = MAX_FILES) -> Snapshot:
    """(mtime_ns, size) of every file under ``folder`` that is not :func:`ignored`,
    by path relative to it. Symlinks are not followed; files that vanish while we
    walk are left out."""
    found: Snapshot = {}
    stack = [str(folder)]
    while stack and len(found) < limit:
        top = stack.pop()
        try:
            entries = list(os.scandir(top))
        except OSError:
            continue
        for entry in entries:
            if ignored(entry.name):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                    continue
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            found[os.path.relpath(entry.path, folder)] = (st.st_mtime_ns, st.st_size)
    return found


def changed(before: Snapshot, after: Snapshot) -> list[str]:
    """Paths added, removed or modified between two snapshots, sorted."""
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


class FolderWatch:
    """Reports a change of a folder once it has settled: ``poll`` returns the changed
    paths when the folder differs from the baseline and has not changed again for
    ``debounce`` seconds (an editor's save, a ``git checkout``: one rerun). Never
    blocks."""

    def __init__(self, folder: Path, debounce: float = DEBOUNCE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.folder = folder
        self.debounce = debounce
        self._clock = clock
        self._baseline = snapshot(folder)
        self._last: Snapshot = self._baseline
        self._settling_since: float | None = None

    def rebase(self) -> None:
        """Take the folder as it is now as the baseline (after a build wrote its
        outputs: those are not a change)."""
        self._baseline = self._last = snapshot(self.folder)
        self._settling_since = None

    def poll(self) -> list[str] | None:
        """The settled change, if there is one (the baseline then moves to it), else None."""
        now = snapshot(self.folder)
        if now != self._last:  # still changing: the debounce starts again
            self._last = now
            self._settling_since = self._clock()
            return None
        if self._settling_since is None:
            return None
        if self._clock() - self._settling_since < self.debounce:
            return None
        paths = changed(self._baseline, now)
        self._baseline = now
        self._settling_since = None
        return paths or None  # changed and changed back: nothing to do

    def wait(self, stop: threading.Event, interval: float = POLL) -> list[str] | None:
        """Block until a settled change (its paths) or ``stop`` is set (None)."""
        while not stop.is_set():
            paths = self.poll()
            if paths:
                return paths
            stop.wait(interval)
        return None


@dataclass(frozen=True)
class BuildResult:
    ok: bool
    code: int | None
    output: str  # the last lines of stdout and stderr together
    seconds: float


def run_build(folder: Path, command: str, timeout: float = BUILD_TIMEOUT,
              stop: threading.Event | None = None) -> BuildResult:
    """Run the manifest's ``build`` command with /bin/sh in ``folder``, in a session of
    its own; on ``timeout`` or ``stop`` its whole process group is asked to end
    (SIGTERM), given 2 s, killed and reaped. Never raises for a failed build."""
    started = time.monotonic()
    proc = subprocess.Popen(["/bin/sh", "-c", command], cwd=folder, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(
        lambda: proc.stdout.read(65536) if proc.stdout else b"", b"")), daemon=True)
    reader.start()
    deadline = started + timeout
    why = None
    while proc.poll() is None:
        if stop is not None and stop.is_set():
            why = "interrupted"
        elif time.monotonic() >= deadline:
            why = f"took longer than {timeout:g} s"
        if why:
            _end_group(proc)
            break
        time.sleep(0.05)
    reader.join(5.0)
    if proc.stdout is not None:
        proc.stdout.close()
    text = b"".join(chunks).decode("utf-8", "replace")
    tail = "\n".join(text.splitlines()[-40:])
    if why:
        tail = (tail + "\n" if tail else "") + f"build {why}"
    ok = why is None and proc.returncode == 0
    return BuildResult(ok, proc.returncode, tail, time.monotonic() - started)


def _end_group(proc: subprocess.Popen[bytes]) -> None:
    """Ask, wait, kill, reap: the build's process group, and every descendant of its
    shell (which may have left the group). Returns once all of them are gone (or
    after 12 s, if one cannot be killed)."""
    import psutil

    try:
        members = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        members = []
    for sig, grace in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 10.0)):
        deadline = time.monotonic() + grace
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        for member in members:
            try:
                member.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        try:
            proc.wait(grace)  # the shell is our child: reaped here, not by psutil
        except subprocess.TimeoutExpired:
            pass
        _, members = psutil.wait_procs(members, timeout=max(0.0, deadline - time.monotonic()))
        if proc.returncode is not None and not members:
            return
