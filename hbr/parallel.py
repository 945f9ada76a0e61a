"""Thread pools that keep results in order and hold only a few jobs at a time.

`ThreadPoolExecutor.map` submits every item at once: one Future (about a kilobyte) per
image stays in memory until its result is consumed, so memory grows with the run.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Callable, Iterable, Iterator


def in_order(jobs: Iterable[Callable[[], Any]], threads: int, name: str) -> Iterator[Any]:
    """Run `jobs` in `threads` threads and yield their results in order, one job waiting
    per thread at most (memory stays bounded)."""
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name) as pool:
        in_flight = deque()
        try:
            for job in jobs:
                in_flight.append(pool.submit(job))
                if len(in_flight) > threads:
                    yield in_flight.popleft().result()
            while in_flight:
                yield in_flight.popleft().result()
        finally:
            for job in in_flight:  # the consumer stopped early or a job failed: start nothing more
                job.cancel()


def map_in_order(fn: Callable[[Any], Any], items: Iterable, threads: int, name: str) -> Iterator[Any]:
    """fn(item) for every item, computed in `threads` threads, yielded in the items' order."""
    return in_order((partial(fn, item) for item in items), threads, name)
