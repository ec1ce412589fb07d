"""The process's one wasmtime Engine, and a cache of compiled modules on disk.

Every wasm app of a process shares one :class:`wasmtime.Engine` (compiled code is
only valid for the engine settings it was compiled with, and an engine is costly).
Its settings are fixed here and fingerprinted into every cache key:

* epoch interruption **on**: it is how stop, ``maxRuntimeSeconds`` and the CPU
  quota interrupt a guest (see ``wasm_host``), and it costs a load and a compare at
  loop headers and function entries;
* fuel **off**: measured here, fuel made a tight arithmetic loop 20-25 % slower and
  a loop with loads, stores and calls 50 % slower, for a deterministic budget the
  manifest has no key for. ``cpuQuota`` is enforced by epoch-based throttling instead.

:class:`ModuleCache` keeps compiled modules under ``$ESTARTER_HOME/cache/wasm/``,
keyed by sha256 of (module bytes, engine settings, wasmtime version), so the second
launch of an app deserialises instead of compiling. Deserialising is unsafe on
untrusted bytes (it maps machine code), so an entry carries our own header with an
HMAC-SHA256 of its key and blob, under a secret kept in the cache folder (mode
0600). A corrupt, truncated, renamed or foreign entry fails the check and is
rebuilt; writes are atomic (temp file, then rename).

Compiling has a budget. A module over ``COMPILE_INLINE_BYTES`` is compiled in a
child process (``python -I`` with wasmtime only) under ``RLIMIT_CPU``,
``RLIMIT_DATA`` and a wall-clock deadline, and the parent deserialises what it
sends back: a module built to make Cranelift work for minutes (a 1.7 MB one took
38 s, a 30 MB one over 10 minutes and 1.6 GB) costs the supervisor one refused
launch, not its memory or its threads. Small modules compile in-process (a
child costs ~0.25 s).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import importlib.metadata
import json
import os
import secrets
import struct
import subprocess
import sys
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import wasmtime

from ..errors import LaunchError

# Settings the shared engine is built with; part of every cache key.
ENGINE_SETTINGS: dict[str, object] = {
    "epoch_interruption": True,
    "consume_fuel": False,
    "cranelift_opt_level": "speed",
}

_MAGIC = b"ESTWASM2"
# magic, hmac-sha256(key + info + blob), info length, blob length; then info JSON, blob
_HEADER = struct.Struct("<8s32sIQ")
_MEMORY_ENTRIES = 64  # compiled modules kept in this process (a module is shareable)
COMPILE_INLINE_BYTES = 64 * 1024  # larger modules compile in a child, under a budget
COMPILE_SECONDS = 30.0  # wall clock of one compile (the child's CPU time too)
COMPILE_MEMORY_BYTES = 1 << 30  # RLIMIT_DATA of the compiling child

# The compiling child: wasm on stdin, the serialised module on stdout. It sets its
# own limits before it reads the untrusted bytes (no preexec_fn in threaded parents).
_CHILD = """
import json, resource, sys
cpu, data, settings = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
resource.setrlimit(resource.RLIMIT_DATA, (data, data))
import wasmtime
config = wasmtime.Config()
config.epoch_interruption = bool(settings["epoch_interruption"])
config.consume_fuel = bool(settings["consume_fuel"])
config.cranelift_opt_level = str(settings["cranelift_opt_level"])
engine = wasmtime.Engine(config)
try:
    module = wasmtime.Module(engine, sys.stdin.buffer.read())
except wasmtime.WasmtimeError as exc:
    print(str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid", file=sys.stderr)
    sys.exit(3)
sys.stdout.buffer.write(module.serialize())
"""

_engine: wasmtime.Engine | None = None
_engine_lock = threading.Lock()


@functools.cache
def wasmtime_version() -> str:
    try:
        return importlib.metadata.version("wasmtime")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - vendored copy
        return "unknown"


@functools.cache
def engine_fingerprint() -> str:
    """What a compiled module depends on besides its bytes."""
    return json.dumps({"wasmtime": wasmtime_version(), **ENGINE_SETTINGS}, sort_keys=True)


def shared_engine() -> wasmtime.Engine:
    """The process's one engine (created on first use; thread-safe)."""
    global _engine
    with _engine_lock:
        if _engine is None:
            config = wasmtime.Config()
            config.epoch_interruption = bool(ENGINE_SETTINGS["epoch_interruption"])
            config.consume_fuel = bool(ENGINE_SETTINGS["consume_fuel"])
            config.cranelift_opt_level = str(ENGINE_SETTINGS["cranelift_opt_level"])
            _engine = wasmtime.Engine(config)
        return _engine


@dataclass(frozen=True)
class CacheStatistics:
    compiled: int  # modules compiled from wasm bytes
    disk_hits: int  # modules deserialised from a checked entry
    memory_hits: int  # modules reused from this process
    rebuilt: int  # entries found corrupt or foreign and replaced


@dataclass(frozen=True)
class ModuleInfo:
    """What a module imports and exports, kept with its cache entry.

    Walking imports through wasmtime-py costs more than instantiating, so it is done
    once per compile and read back (under the entry's HMAC) by later processes.
    """

    imports: tuple[tuple[str, str, str], ...]  # (module, name, "i32,i32->i32" | kind)
    min_memory_bytes: int  # the largest declared minimum of an exported memory
    exports: tuple[str, ...]
    memories: int = 0  # memories the module defines (exported or not)
    tables: int = 0  # tables the module defines

    @staticmethod
    def of(module: wasmtime.Module, wasm: bytes = b"") -> ModuleInfo:
        imports = tuple((imp.module, imp.name or "", _describe(imp.type))
                        for imp in module.imports)
        exports = module.exports
        minimum = max((e.type.limits.min * 65536 for e in exports
                       if isinstance(e.type, wasmtime.MemoryType)), default=0)
        memories, tables = defined_counts(wasm)
        return ModuleInfo(imports, minimum, tuple(e.name for e in exports), memories, tables)

    def to_json(self) -> bytes:
        return json.dumps([self.imports, self.min_memory_bytes, self.exports,
                           self.memories, self.tables]).encode()

    @staticmethod
    def from_json(raw: bytes) -> ModuleInfo:
        # An entry of an older layout raises ValueError: it is rebuilt.
        imports, minimum, exports, memories, tables = json.loads(raw)
        return ModuleInfo(tuple(tuple(i) for i in imports), int(minimum), tuple(exports),
                          int(memories), int(tables))


def _uleb(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def defined_counts(wasm: bytes) -> tuple[int, int]:
    """(memories, tables) defined by a valid module's binary: the counts of its memory
    (5) and table (4) sections. Imported ones need no count: the host provides none,
    so such a module cannot link."""
    memories = tables = 0
    pos = 8  # magic and version
    try:
        while pos < len(wasm):
            section = wasm[pos]
            size, pos = _uleb(wasm, pos + 1)
            if section in (4, 5):
                count, _ = _uleb(wasm, pos)
                if section == 4:
                    tables = count
                else:
                    memories = count
            pos += size
    except IndexError:  # not a binary we compiled: the store limits still hold
        pass
    return memories, tables


def describe_functype(ty: wasmtime.FuncType) -> str:
    return (",".join(str(p) for p in ty.params) + "->"
            + ",".join(str(r) for r in ty.results))


def _describe(ty: object) -> str:
    if isinstance(ty, wasmtime.FuncType):
        return describe_functype(ty)
    return type(ty).__name__


class ModuleCache:
    """Compiled modules by content; thread-safe. Never trusts an entry it cannot verify."""

    def __init__(self, root: Path, engine: wasmtime.Engine | None = None, *,
                 compile_inline_bytes: int = COMPILE_INLINE_BYTES,
                 compile_seconds: float = COMPILE_SECONDS,
                 compile_memory_bytes: int = COMPILE_MEMORY_BYTES) -> None:
        self.root = Path(root)
        self.engine = engine or shared_engine()
        self._inline_bytes = compile_inline_bytes
        self._compile_seconds = compile_seconds
        self._compile_memory = compile_memory_bytes
        self._fingerprint = engine_fingerprint().encode()
        self._secret: bytes | None = None
        self._lock = threading.Lock()
        self._memory: OrderedDict[str, tuple[wasmtime.Module, ModuleInfo]] = OrderedDict()
        self._compiled = self._disk_hits = self._memory_hits = self._rebuilt = 0

    def statistics(self) -> CacheStatistics:
        with self._lock:
            return CacheStatistics(self._compiled, self._disk_hits, self._memory_hits,
                                   self._rebuilt)

    def key(self, wasm: bytes) -> str:
        digest = hashlib.sha256(self._fingerprint)
        digest.update(b"\0")
        digest.update(wasm)
        return digest.hexdigest()

    def path_for(self, wasm: bytes) -> Path:
        return self.root / f"{self.key(wasm)}.cwasm"

    def load(self, wasm: bytes) -> wasmtime.Module:
        """The compiled module for ``wasm`` bytes; raises LaunchError if they are not wasm."""
        return self.load_with_info(wasm)[0]

    def load_with_info(self, wasm: bytes) -> tuple[wasmtime.Module, ModuleInfo]:
        """The compiled module and its imports/exports; raises LaunchError if not wasm."""
        key = self.key(wasm)
        with self._lock:
            hit = self._memory.get(key)
            if hit is not None:
                self._memory.move_to_end(key)
                self._memory_hits += 1
                return hit
        loaded = self._load_entry(key)
        if loaded is None:
            module = self._compile(wasm)
            loaded = module, ModuleInfo.of(module, wasm)
            self._store_entry(key, *loaded)
        with self._lock:
            self._memory[key] = loaded
            while len(self._memory) > _MEMORY_ENTRIES:
                self._memory.popitem(last=False)
        return loaded

    # -- internals ---------------------------------------------------------------------

    def _compile(self, wasm: bytes) -> wasmtime.Module:
        if len(wasm) > self._inline_bytes:
            module = self._compile_in_child(wasm)
        else:
            try:
                module = wasmtime.Module(self.engine, wasm)
            except wasmtime.WasmtimeError as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid"
                raise LaunchError(f"not a valid WebAssembly module: {first}") from None
        with self._lock:
            self._compiled += 1
        return module

    def _compile_in_child(self, wasm: bytes) -> wasmtime.Module:
        """Compile under the budget; raises LaunchError when it is spent or the
        module is invalid. Only this engine's own settings cross to the child."""
        if self.engine is not shared_engine():  # pragma: no cover - tests pass none
            raise LaunchError("compiling in a child needs the shared engine")
        budget = self._compile_seconds
        cpu = max(1, int(budget + 0.999))
        argv = [sys.executable, "-I", "-c", _CHILD, str(cpu), str(self._compile_memory),
                json.dumps(ENGINE_SETTINGS)]
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, close_fds=True, env={})
        try:
            blob, err = proc.communicate(wasm, timeout=budget)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise LaunchError(
                f"compiling the module ({len(wasm)} bytes) took over {budget:g} s: refused",
                {"size": len(wasm), "compileSeconds": budget}) from None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if proc.returncode == 3:
            first = err.decode("utf-8", "replace").strip()[:300] or "invalid"
            raise LaunchError(f"not a valid WebAssembly module: {first}")
        if proc.returncode != 0:
            why = {-9: "CPU time", -24: "CPU time"}.get(proc.returncode, "memory or a crash")
            raise LaunchError(
                f"compiling the module ({len(wasm)} bytes) ran out of its budget "
                f"({why}; {budget:g} s, {self._compile_memory >> 20} MiB): refused",
                {"size": len(wasm), "exitCode": proc.returncode})
        try:
            return wasmtime.Module.deserialize(self.engine, blob)
        except wasmtime.WasmtimeError as exc:  # pragma: no cover - a broken child
            raise LaunchError(f"compiled module not loadable: {exc}") from None

    def _mac(self, key: str, blob: bytes) -> bytes:
        return hmac.new(self._get_secret(), key.encode() + b"\0" + blob, "sha256").digest()

    def _load_entry(self, key: str) -> tuple[wasmtime.Module, ModuleInfo] | None:
        path = self.root / f"{key}.cwasm"
        try:
            raw = path.read_bytes()
        except OSError:
            return None
        loaded = None
        if len(raw) >= _HEADER.size:
            magic, mac, info_len, blob_len = _HEADER.unpack_from(raw)
            body = raw[_HEADER.size:]
            if (magic == _MAGIC and info_len + blob_len == len(body)
                    and hmac.compare_digest(mac, self._mac(key, body))):
                # Only now, with the bytes proven ours, parse and deserialise them.
                try:
                    info = ModuleInfo.from_json(body[:info_len])
                    module = wasmtime.Module.deserialize(self.engine, body[info_len:])
                    loaded = module, info
                except (wasmtime.WasmtimeError, ValueError, TypeError):
                    loaded = None  # our own entry from an incompatible build: rebuild
        with self._lock:
            if loaded is None:
                self._rebuilt += 1
            else:
                self._disk_hits += 1
        if loaded is None:
            path.unlink(missing_ok=True)
        return loaded

    def _store_entry(self, key: str, module: wasmtime.Module, info: ModuleInfo) -> None:
        info_json = info.to_json()
        body = info_json + bytes(module.serialize())
        data = _HEADER.pack(_MAGIC, self._mac(key, body), len(info_json),
                            len(body) - len(info_json)) + body
        try:
            self._ensure_root()
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=".cwasm")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, self.root / f"{key}.cwasm")
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError:
            pass  # a read-only or full home only costs a compile next time

    def _ensure_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _get_secret(self) -> bytes:
        if self._secret is not None:
            return self._secret
        self._ensure_root()
        path = self.root / ".key"
        try:
            secret = path.read_bytes()
        except FileNotFoundError:
            secret = b""
        if len(secret) != 32:
            # Several processes may race here: link() makes the first writer win, and
            # everyone reads back the winner. A damaged key file is replaced.
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-key-")
            try:
                os.write(fd, secrets.token_bytes(32))
                os.close(fd)
                if path.exists():
                    os.replace(tmp, path)
                else:
                    with contextlib.suppress(FileExistsError):
                        os.link(tmp, path)
            finally:
                Path(tmp).unlink(missing_ok=True)
            secret = path.read_bytes()
        self._secret = secret
        return secret


__all__ = [
    "ENGINE_SETTINGS",
    "CacheStatistics",
    "ModuleCache",
    "ModuleInfo",
    "defined_counts",
    "describe_functype",
    "engine_fingerprint",
    "shared_engine",
    "wasmtime_version",
]
