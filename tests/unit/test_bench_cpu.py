"""benchmarks.common.TreeCpu.parts: a burst's CPU split by what each process is. A
process below a supervisor worker that is not Ray's counts as its app's."""

from __future__ import annotations

import subprocess
import sys

from benchmarks.common import APPS_PART, IDLE_ACTORS, OTHER, SUPERVISORS, TreeCpu, _part

# A "supervisor" (named so on its command line) whose child burns CPU, then both
# wait for their stdin to close.
SUPERVISOR = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE)
print(child.stdout.readline().decode().strip(), flush=True)
sys.stdin.read()
child.stdin.close()
child.wait(60)
"""
BURNER = """
import sys, time
end = time.process_time() + 0.3
while time.process_time() < end:
    pass
print("burnt", flush=True)
sys.stdin.read()
"""


def test_parts_are_named_by_the_command_line() -> None:
    assert _part("ray::estarter-sup-0a1b2c3d4e-9f8e7d6c5b4a:SupervisorShell.start") == \
        SUPERVISORS
    assert _part("ray::Idle.pid") == IDLE_ACTORS
    assert _part("python app.py") is None  # decided by its parent


def test_a_supervisors_child_counts_as_the_apps() -> None:
    cpu = TreeCpu()
    sup = subprocess.Popen([sys.executable, "-c", SUPERVISOR, BURNER, "SupervisorShell"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert sup.stdout is not None
        assert sup.stdout.readline().decode().strip() == "burnt"
        parts = cpu.parts()
        assert parts.get(APPS_PART, 0.0) >= 0.25, parts
        assert parts.get(OTHER, 0.0) < 0.25, parts
        assert abs(cpu.seconds() - sum(cpu.parts().values())) < 0.2
    finally:
        assert sup.stdin is not None
        sup.stdin.close()
        sup.wait(60)
