"""A supervisor's worker process loads only what a supervisor needs (issue 15): Ray
imports ``actors.supervisor`` there, and the kernel's modules cost every one of the
hundreds of supervisors CPU at start and memory for as long as it runs. Nor does it
load pydantic and the manifest models (8.8 MiB of its private memory): it receives
a pickled SandboxPolicy, which must not bring them back either."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

from estarter.manifest import AppManifest
from estarter.policy import SandboxPolicy

ROOT = Path(__file__).resolve().parents[2]


def test_the_supervisor_module_does_not_load_the_kernel() -> None:
    code = ("import sys, actors.supervisor\n"
            "print(sorted(m for m in sys.modules if m in ("
            "'actors.kernel', 'actors.spawner', 'estarter.kernel.core',"
            " 'estarter.state', 'sqlite3')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_the_package_still_gives_every_name_it_lists() -> None:
    import actors

    for name in actors.__all__:
        assert getattr(actors, name) is not None
    assert actors.KernelActor is __import__("actors.kernel", fromlist=["x"]).KernelActor


WORKER = """
import pickle, sys, json
import actors.supervisor
from estarter.hosting import factory, process_host, wasm_host
policy = pickle.loads(sys.stdin.buffer.read())
print(json.dumps({"app": policy.app_id, "runtime": policy.runtime.value,
                  "heavy": sorted(m for m in sys.modules
                                  if m.split(".")[0] in ("pydantic", "pydantic_core")
                                  or m == "estarter.manifest")}))
"""


def test_a_supervisor_worker_imports_no_pydantic(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("")
    manifest = AppManifest.model_validate({"id": "light", "runtime": "python",
                                           "entry": "app.py"})
    policy = SandboxPolicy.from_manifest(manifest, tmp_path)
    out = subprocess.run([sys.executable, "-c", WORKER], input=pickle.dumps(policy),
                         capture_output=True, cwd=ROOT, timeout=120, check=True)
    seen = json.loads(out.stdout.decode().strip().splitlines()[-1])
    assert seen == {"app": "light", "runtime": "python", "heavy": []}


def test_the_kernel_and_vfs_classes_load_neither_kernel_nor_pydantic() -> None:
    """Ray loads an actor's class in every process that gets a handle to it: each
    supervisor gets the kernel's and the VFS's (actors.handles)."""
    code = ("import sys, actors.handles\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pydantic', 'sqlite3')"
            " or m in ('actors.kernel', 'actors.vfs', 'estarter.kernel.core',"
            " 'estarter.manifest')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_the_kernel_actor_forwards_every_public_method_of_the_kernel() -> None:
    import inspect

    from actors.handles import KERNEL_METHODS, KernelShell
    from actors.kernel import RayKernel

    public = {n for n, v in inspect.getmembers(RayKernel)
              if not n.startswith("_") and callable(v)}
    assert set(KERNEL_METHODS) | {"call"} == public
    assert all(callable(getattr(KernelShell, n)) for n in public)
