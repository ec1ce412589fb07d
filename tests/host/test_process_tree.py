"""estarter.metrics.descendants: an app's process tree, read from its own /proc entries."""

from __future__ import annotations

import subprocess
import time

import psutil

from estarter.metrics import descendants, process_usage


def test_descendants_are_the_whole_tree_and_only_it() -> None:
    # sh -> (sh -> sleep), sleep: two children, one grandchild.
    tree = subprocess.Popen(["sh", "-c", "sh -c 'sleep 120; :' & sleep 120 & wait"])
    other = subprocess.Popen(["sleep", "120"])  # a sibling of the tree: not in it
    try:
        root = psutil.Process(tree.pid)
        deadline = time.monotonic() + 60
        while len(root.children(recursive=True)) < 3:
            assert time.monotonic() < deadline, "the tree did not form in 60 s"
            time.sleep(0.05)
        expected = {c.pid for c in root.children(recursive=True)}
        found = descendants(tree.pid)
        assert set(found) == expected and len(found) == len(expected)
        assert other.pid not in found and tree.pid not in found
        usage = process_usage(tree.pid)
        assert usage["memoryBytes"] >= root.memory_info().rss
    finally:
        for proc in psutil.Process(tree.pid).children(recursive=True):
            proc.kill()
        tree.kill()
        other.kill()
        tree.wait(30)
        other.wait(30)


def test_a_gone_process_has_no_descendants() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait(30)
    assert descendants(proc.pid) == []
    assert process_usage(proc.pid) == {"cpuSeconds": 0.0, "memoryBytes": 0}
