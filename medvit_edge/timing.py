"""One latency helper for export's guard, evaluate and the benchmarks, and the words that say
what a printed latency covers.

Three different things get timed, and each printed figure says which, in the same words in
export, info, evaluate and benchmark:

* export/info: ``preprocess + model``, batch 1, one decoded frame a little larger than the
  model's input (``recommend.measure_ms``): what ``infer`` costs per already-decoded image;
* evaluate: ``model only``, batch 1, one preprocessed tensor (raw-input files take the decoded
  image: ``preprocess + model``): the variants' own speed, side by side;
* benchmark: ``preprocess + model``, batch N, 640x480 frames or the given images, decoding
  excluded: what a user's own images cost on their machine.
"""

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


MODEL_ONLY = "model only"
PREPROCESS_AND_MODEL = "preprocess + model"


def latency_scope(covers: str, batch: int, inputs: str) -> str:
    """``preprocess + model, batch 1, one decoded 96x96 frame``: what a printed latency covers."""
    return f"{covers}, batch {batch}, {inputs}"
