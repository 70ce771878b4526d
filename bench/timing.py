"""Wall-clock timing of repeated calls, shared by the benchmark scripts."""

from __future__ import annotations

import time
from collections.abc import Callable


def time_calls(fn: Callable[[], object], rounds: int, warmup: int = 1) -> list[float]:
    """Seconds of each of `rounds` calls of `fn` (which must block until its work is done),
    after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times
