"""A supervisor's worker process loads only what a supervisor needs (issue 15): Ray
imports ``actors.supervisor`` there, and the kernel's modules cost every one of the
hundreds of supervisors CPU at start and memory for as long as it runs."""

from __future__ import annotations

import subprocess
import sys


def test_the_supervisor_module_does_not_load_the_kernel() -> None:
    code = ("import sys, actors.supervisor\n"
            "print(sorted(m for m in sys.modules if m in ("
            "'actors.kernel', 'actors.spawner', 'estarter.kernel.core')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_the_package_still_gives_every_name_it_lists() -> None:
    import actors

    for name in actors.__all__:
        assert getattr(actors, name) is not None
    assert actors.KernelActor is __import__("actors.kernel", fromlist=["x"]).KernelActor
