"""One latency helper for export's guard, evaluate and the benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Latency:
    """Milliseconds per call over ``runs`` timed calls (after the warm-up calls)."""

    p50_ms: float
    p95_ms: float
    min_ms: float
    max_ms: float
    runs: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_latency(call: Callable[[int], Any], runs: int, warmup: int = 1) -> Latency:
    """Time ``call(i)`` for i in 0..runs-1 after ``warmup`` untimed calls; ``i`` lets the caller
    rotate inputs."""
    for i in range(warmup):
        call(i)
    times = []
    for i in range(runs):
        started = time.perf_counter()
        call(i)
        times.append((time.perf_counter() - started) * 1000)
    p95 = statistics.quantiles(times, n=20)[18] if len(times) > 1 else times[0]
    return Latency(statistics.median(times), p95, min(times), max(times), runs)
