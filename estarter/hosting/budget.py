"""Budgets of one process: a token bucket (how often something an app asks for may
happen), and returning the memory of big messages to the OS."""

from __future__ import annotations

import ctypes
import sys
import threading
import time
from collections.abc import Callable


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` banked; ``rate <= 0`` is unlimited.

    ``take()`` is True and spends ``cost`` tokens when there are enough, else False
    and counts the refusal in ``refused``. Never blocks.
    """

    def __init__(self, rate: float, burst: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self._clock = rate, burst, clock
        self._tokens = burst
        self._last = clock()
        self._lock = threading.Lock()
        self.refused = 0

    def take(self, cost: float = 1.0) -> bool:
        if self.rate <= 0:
            return True
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + max(0.0, now - self._last) * self.rate)
            self._last = now
            if self._tokens >= cost:
                self._tokens -= cost
                return True
            self.refused += 1
            return False


BIG_ALLOCATION = 1 << 20  # bytes from which glibc maps (and unmaps) every block
_M_MMAP_THRESHOLD = -3  # mallopt parameter of glibc's malloc.h
_released: bool | None = None


def release_big_allocations() -> bool:
    """Make glibc serve every block of ``BIG_ALLOCATION`` bytes or more with its own
    mapping, unmapped on free. Idempotent; False where it cannot (not glibc).

    glibc raises its mmap threshold after such a block is freed (up to 32 MiB), so the
    buffers of a few 16 MiB messages parsed on a reader thread stay in that thread's
    arena, free but resident: measured here, 60 log notifications of 16 MiB left a
    host 50 MiB (in a test process 100 MiB) bigger for good; with a fixed threshold,
    under 1 MiB. Costs a mmap/munmap pair per big block.
    """
    global _released
    if _released is None:
        try:
            libc = ctypes.CDLL(None)
            _released = sys.platform == "linux" and hasattr(libc, "mallopt") and bool(
                libc.mallopt(_M_MMAP_THRESHOLD, BIG_ALLOCATION))
        except (OSError, AttributeError):
            _released = False
    return _released


__all__ = ["BIG_ALLOCATION", "TokenBucket", "release_big_allocations"]
