"""Handing memory that the C allocator keeps for freed blocks back to the system.

Long runs free and allocate large buffers (DICOM pixels, activations) over and over;
glibc keeps many of the freed pages, so a process grows through a run although it holds
no more data. Trimming now and then keeps it flat; trimming too often costs time, as
the pages must then be faulted in again.
"""

from __future__ import annotations

import ctypes
import itertools


def _find_malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc (Linux); absent from other C libraries
    except (OSError, AttributeError, TypeError):  # TypeError: Windows cannot open "no library"
        return None


_MALLOC_TRIM = _find_malloc_trim()


def release_freed_memory() -> None:
    """Return the freed memory the C allocator holds to the system (glibc's malloc_trim;
    nothing on other systems)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


class PeriodicRelease:
    """A callable that runs `release_freed_memory` on every `every`-th call (thread-safe:
    itertools.count hands out each number once)."""

    def __init__(self, every: int):
        self.every = every
        self._calls = itertools.count(1)

    def __call__(self) -> None:
        if next(self._calls) % self.every == 0:
            release_freed_memory()
