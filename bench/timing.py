"""Wall-clock timing of repeated calls, shared by the benchmark scripts."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator


def seconds_of(fn: Callable[[], object]) -> float:
    """Seconds of one call of `fn` (which must block until its work is done)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_calls(fn: Callable[[], object], rounds: int, warmup: int = 1) -> list[float]:
    """Seconds of each of `rounds` calls of `fn` (which must block until its work is done),
    after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    return [seconds_of(fn) for _ in range(rounds)]


def items_within(iterator: Iterator[object], seconds: float, warmup: int = 1
                 ) -> tuple[int, float]:
    """(count, elapsed): how many items `iterator` yields in `seconds` of wall time (the last
    one may end past it; elapsed is the time they took), after `warmup` untimed items."""
    for _ in range(warmup):
        next(iterator)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        next(iterator)
        count += 1
    return count, time.perf_counter() - start


def default_matmul_size(platform: str) -> int:
    """The side of the square matmul timed for the best FLOP rate (both frameworks): seconds at
    most on a CPU, large enough to saturate an accelerator."""
    return 2048 if platform == "cpu" else 8192
