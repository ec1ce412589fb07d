"""The persistent runtime: ``estarter up`` / ``down`` and how other commands find it.

``up`` starts a Ray head of its own (or joins ``--address``), creates the named,
detached kernel actor and records how to reach it in ``$ESTARTER_HOME/run/runtime.json``
(written atomically: a reader sees the old file, the new one or none). The head
``up`` starts is this home's alone: its own ``--temp-dir`` (``/tmp/estarter-<key>``,
short because Ray puts Unix sockets under it), its own free ports and its own Ray
auth token file, so ``down`` stops exactly its processes, found by that temp dir
and port, and never another Ray on the machine (``ray stop`` would stop them all).

The head outlives the terminal that ran ``up``: ``ray start`` runs in a session of its
own (no controlling terminal, so no SIGHUP when an SSH session or a tmux pane closes),
with stdin from /dev/null and its output in ``$ESTARTER_HOME/run/ray-start.log``;
every Ray process, the kernel and the apps descend from it. A ``runtime.json`` whose
head no longer answers is stale: ``up`` says so, stops what that head left and starts
a new one.

No Ray import here: the Ray side is ``actors/``; this module runs ``ray start`` as a
command and finds processes with psutil.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from .errors import EstarterError, LaunchError, NotFound
from .packaging import fsync_dir
from .paths import run_dir
from .state import home_key
from .supervision import RestartRules

RUNTIME_FILE = "runtime.json"
TOKEN_FILE = "ray-auth-token"
HEAD_LOG = "ray-start.log"
HEAD_PID_FILE = "head.pid"  # the GCS server's pid: what a service manager tracks
HEAD_START_SECONDS = 120.0
STOP_GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class RuntimeInfo:
    """What ``up`` recorded: where the runtime's Ray is and what ``down`` must stop."""

    home: str
    address: str  # GCS address, host:port
    started_head: bool  # True: ``down`` stops the Ray head too
    temp_dir: str | None = None  # the head's --temp-dir (ours alone)
    gcs_port: int | None = None
    auth_token_path: str | None = None  # our head's Ray auth token
    started_at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def runtime_file(home: Path) -> Path:
    return run_dir(home) / RUNTIME_FILE


def read_runtime(home: Path) -> RuntimeInfo | None:
    """The recorded runtime of ``home``, or None (none recorded, or unreadable)."""
    try:
        data = json.loads(runtime_file(home).read_text())
        return RuntimeInfo(**data)
    except (OSError, ValueError, TypeError):
        return None


def write_runtime(home: Path, info: RuntimeInfo) -> None:
    """Atomic and durable: temp file, fsync, rename, fsync the folder."""
    folder = run_dir(home)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{RUNTIME_FILE}.{secrets.token_hex(4)}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(info.to_json(), fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, runtime_file(home))
    fsync_dir(folder)


def remove_runtime(home: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        runtime_file(home).unlink()
        fsync_dir(run_dir(home))


def reachable(address: str, timeout: float = 2.0) -> bool:
    """Does something accept connections at ``host:port`` (the GCS)?"""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def use_auth(info: RuntimeInfo | None) -> None:
    """Set this process's Ray auth settings for ``info``'s cluster (before ray.init).

    Ray enables token auth only for clusters it finds itself; with an explicit
    address the client must ask for it. Our own head has its own token file; a
    joined cluster uses the caller's settings, or the default token if one exists.
    """
    if info is not None and info.auth_token_path:
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN_PATH"] = info.auth_token_path
        os.environ.pop("RAY_AUTH_TOKEN", None)
    elif "RAY_AUTH_MODE" not in os.environ and (Path.home() / ".ray" / "auth_token").exists():
        os.environ["RAY_AUTH_MODE"] = "token"


def connect_info(home: Path) -> RuntimeInfo:
    """The runtime that is up for ``home``; NotFound (one clear line) if none is."""
    info = read_runtime(home)
    if info is None:
        raise NotFound(f"no estarter runtime is up for {home} (start one with: estarter up)")
    if not reachable(info.address):
        raise NotFound(f"the runtime recorded for {home} at {info.address} is not reachable "
                       "(killed?); run estarter up again")
    return info


# -- up and down ------------------------------------------------------------------


def up(home: Path, address: str | None = None, strict: bool = False,
       rules: RestartRules | None = None) -> dict[str, Any]:
    """Start (or find) this home's persistent runtime; returns what ``up`` records
    plus ``status`` and the kernel's ``recovery`` report. Call it from a process
    not connected to Ray: it connects, creates the detached kernel, disconnects."""
    from actors import get_or_create_kernel, ray_api

    if ray_api.is_initialized():
        raise EstarterError("up must run in a process that is not connected to Ray")
    existing = read_runtime(home)
    stale: dict[str, Any] | None = None
    if existing is not None and not reachable(existing.address):
        stale = clean_stale(home, existing)  # killed with -9, or its host rebooted
        existing = None
    status = "already up" if existing is not None else "started"
    info = existing or (RuntimeInfo(str(home), address, False, started_at=time.time())
                        if address else start_head(home))
    use_auth(info)
    try:
        ray_api.init(info.address)
        handle, _ = get_or_create_kernel(home, strict=strict, detached=True,
                                         rules=rules or RestartRules.from_env())
        recovery = ray_api.call(handle.recovery_report, timeout=60)
        if existing is None:
            write_runtime(home, info)
    except BaseException:
        if existing is None and info.started_head:
            stop_processes(info.temp_dir, info.gcs_port)
        raise
    finally:
        ray_api.shutdown()
    if info.started_head and existing is None:
        _write_head_pid(home, info)
    return {"status": status, **info.to_json(), "recovery": recovery, "stale": stale}


def clean_stale(home: Path, info: RuntimeInfo) -> dict[str, Any]:
    """A recorded runtime whose head does not answer: stop every process it left
    (Ray's, supervisors, apps), remove its temp dir and record. Returns what it
    was, for ``up`` to say so."""
    processes = 0
    if info.started_head:
        processes = stop_processes(info.temp_dir, info.gcs_port)
        if info.temp_dir:
            shutil.rmtree(info.temp_dir, ignore_errors=True)
    remove_runtime(home)
    with contextlib.suppress(FileNotFoundError):
        (run_dir(home) / HEAD_PID_FILE).unlink()
    return {"address": info.address, "startedAt": info.started_at,
            "startedHead": info.started_head, "processes": processes}


def _write_head_pid(home: Path, info: RuntimeInfo) -> None:
    """The GCS server's pid in ``run/head.pid``: the process a service manager tracks
    (``Type=forking``, ``PIDFile=``); it lives exactly as long as the head."""
    for proc in runtime_processes(info.temp_dir, info.gcs_port):
        with contextlib.suppress(psutil.Error):
            if proc.name().startswith("gcs_server"):
                path = run_dir(home) / HEAD_PID_FILE
                tmp = path.with_name(f".{HEAD_PID_FILE}.{secrets.token_hex(4)}")
                tmp.write_text(f"{proc.pid}\n")
                os.replace(tmp, path)
                return


def down(home: Path, grace: float = 5.0) -> dict[str, Any]:
    """Stop what ``up`` started: the apps (they come back on the next ``up`` per
    their restart policy), every supervisor and the kernel of this home and, if
    ``up`` started it, the Ray head. Idempotent."""
    from actors import KERNEL_NAME, ray_api
    from actors.kernel import kill_runtime
    from actors.options import BLOCKING
    from actors.supervisor import supervisor_prefix

    from .console import service as console_service

    console_service.stop(home)  # first: it is a client of the runtime going down
    info = read_runtime(home)
    killed: list[str] = []
    if info is not None and reachable(info.address) and not ray_api.is_initialized():
        use_auth(info)
        try:
            ray_api.init(info.address)
            try:
                kernel = ray_api.get_actor(KERNEL_NAME)
                desc = ray_api.call(kernel.describe, timeout=30)
                if desc["home"] == str(home):
                    killed = ray_api.call(kernel.release, grace, True, timeout=120 + grace,
                                          group=BLOCKING)
                    kill_runtime(kernel)  # and the VFS and permissions actors
            except EstarterError:
                pass  # no kernel (or it does not answer): sweep what is left
            killed += ray_api.kill_named(supervisor_prefix(home))
        finally:
            ray_api.shutdown()
    processes = 0
    temp_dir = (info.temp_dir if info is not None else None) or str(head_temp_dir(home))
    if info is None or info.started_head:
        processes = stop_processes(temp_dir, info.gcs_port if info else None)
        shutil.rmtree(temp_dir, ignore_errors=True)
    remove_runtime(home)
    with contextlib.suppress(FileNotFoundError):
        (run_dir(home) / HEAD_PID_FILE).unlink()
    return {"stopped": info is not None, "supervisors": len(killed), "processes": processes}


# -- our own Ray head --------------------------------------------------------------


def head_temp_dir(home: Path) -> Path:
    return Path("/tmp") / f"estarter-{home_key(home)}"


def start_head(home: Path) -> RuntimeInfo:
    """``ray start --head`` on free ports with this home's temp dir and auth token."""
    temp_dir = head_temp_dir(home)
    stop_processes(temp_dir, None)  # leftovers of a runtime killed with -9
    shutil.rmtree(temp_dir, ignore_errors=True)
    token = _token_file(home)
    ports = _free_ports(7)
    gcs, dash, agent, agent_grpc, client, env_agent, metrics = ports
    argv = [_ray_command(), "start", "--head", f"--port={gcs}",
            f"--temp-dir={temp_dir}", "--include-dashboard=false", f"--dashboard-port={dash}",
            "--disable-usage-stats", f"--dashboard-agent-listen-port={agent}",
            f"--dashboard-agent-grpc-port={agent_grpc}", f"--ray-client-server-port={client}",
            f"--runtime-env-agent-port={env_agent}", f"--metrics-export-port={metrics}"]
    from actors.options import RAY_SYSTEM_CONFIG  # plain data, no Ray import

    argv.append(f"--system-config={json.dumps(RAY_SYSTEM_CONFIG)}")
    resources = _slot_resources()
    if resources:
        argv.append(f"--resources={json.dumps(resources)}")
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
           "ESTARTER_HOME": str(home)}
    env.pop("RAY_AUTH_TOKEN", None)
    env.pop("RAY_ADDRESS", None)
    log = run_dir(home) / HEAD_LOG
    try:
        # Detached: its own session (no controlling terminal: closing the terminal
        # sends it no SIGHUP), stdin /dev/null, output to a file, not a pipe that
        # dies with us. Its daemons inherit all three.
        with open(log, "wb") as out:
            proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True,
                                  timeout=HEAD_START_SECONDS, cwd="/")
    except subprocess.TimeoutExpired:
        stop_processes(temp_dir, gcs)
        raise LaunchError(f"ray start did not finish within {HEAD_START_SECONDS:.0f} s "
                          f"(its output: {log})") from None
    if proc.returncode != 0:
        stop_processes(temp_dir, gcs)
        lines = log.read_text(errors="replace").strip().splitlines()
        raise LaunchError(f"ray start failed: {(lines or ['no output'])[-1]} "
                          f"(its output: {log})")
    address = _current_cluster(temp_dir) or f"{_node_ip()}:{gcs}"
    return RuntimeInfo(str(home), address, True, str(temp_dir), gcs, str(token), time.time())


def runtime_processes(temp_dir: str | os.PathLike[str] | None,
                      gcs_port: int | None) -> list[psutil.Process]:
    """Every process of the Ray head using ``temp_dir``: those naming it (or the GCS
    port) on their command line, and all their descendants (workers, which Ray
    renames ``ray::...``, and the apps under them)."""
    needles = [n for n in (str(temp_dir) if temp_dir else None,
                           f":{gcs_port}" if gcs_port else None) if n]
    if not needles:
        return []
    me = os.getpid()
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            if proc.pid == me or not any(n in cmd for n in needles):
                continue
            found[proc.pid] = proc
            for child in proc.children(recursive=True):
                found.setdefault(child.pid, child)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    found.pop(me, None)
    return list(found.values())


def stop_processes(temp_dir: str | os.PathLike[str] | None, gcs_port: int | None,
                   grace: float = STOP_GRACE_SECONDS) -> int:
    """Ask (SIGTERM), wait ``grace``, kill (SIGKILL), reap: only this head's processes.
    Returns how many there were."""
    procs = runtime_processes(temp_dir, gcs_port)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=grace)
    return len(procs)


def _token_file(home: Path) -> Path:
    """This home's Ray auth token (created once, 0600)."""
    path = run_dir(home) / TOKEN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
            fh.flush()
            os.fsync(fh.fileno())
    return path


def _free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _ray_command() -> str:
    beside = Path(sys.executable).with_name("ray")
    found = str(beside) if beside.exists() else shutil.which("ray")
    if not found:
        raise LaunchError("the ray command is not installed next to this Python")
    return found


def _current_cluster(temp_dir: Path) -> str | None:
    try:
        text = (temp_dir / "ray_current_cluster").read_text().strip()
    except OSError:
        return None
    return text or None


def _node_ip() -> str:
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # no packet is sent; picks the outgoing address
        return str(s.getsockname()[0])
    return "127.0.0.1"


def _slot_resources() -> dict[str, float]:
    """The app slots a node estarter starts advertises (see estarter.placement)."""
    try:
        from .placement import node_resources
    except ImportError:  # placement is optional for a head
        return {}
    return node_resources(psutil.virtual_memory().total)


__all__ = [
    "RuntimeInfo",
    "clean_stale",
    "connect_info",
    "down",
    "read_runtime",
    "remove_runtime",
    "runtime_processes",
    "start_head",
    "stop_processes",
    "up",
    "use_auth",
    "write_runtime",
]
