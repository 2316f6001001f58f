"""The speed suite's throughput mode: every core busy, images per second.

* OpenVINO: compiled with ``PERFORMANCE_HINT`` = ``THROUGHPUT`` (it picks the streams) and fed
  one image per request through an ``AsyncInferQueue`` of its optimal number of requests;
* a medvit-edge variant (any file ``Classifier.load`` takes): one ``Classifier`` with one thread
  per core, each driven by its own Python thread (the runtime releases the GIL while it runs),
  one image per call;
* the PyTorch and Optimum rows: the batch-N model-only figure of the latency table, converted to
  images/s (one process with every thread on one batch is how those users fill the cores).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bench.peers import compile_openvino

Measure = Callable[[], float]  # one timed run -> images/s


def openvino_throughput(path: Path, threads: int, pixels: np.ndarray, images: int) -> Measure:
    import openvino as ov

    compiled = compile_openvino(path, threads, "THROUGHPUT")
    queue = ov.AsyncInferQueue(compiled, compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))

    def run(count: int) -> None:
        for i in range(count):
            queue.start_async({0: pixels[i % len(pixels)][None]})
        queue.wait_all()

    run(len(queue))  # warm-up: every request once

    def measure() -> float:
        started = time.perf_counter()
        run(images)
        return images / (time.perf_counter() - started)

    return measure


def classifier_throughput(path: Path, threads: int, pixels: np.ndarray, images: int) -> Measure:
    from medvit_edge.runtime.classifier import Classifier

    classifiers = [
        Classifier.load(path, device="cpu", threads=1, spin=False, verify=False) for _ in range(threads)
    ]
    share = max(1, images // threads)

    def work(k: int, count: int) -> None:
        for i in range(count):
            classifiers[k].run(pixels[(k + i * threads) % len(pixels)][None])

    pool = ThreadPoolExecutor(threads)
    list(pool.map(work, range(threads), [1] * threads))  # warm-up

    def measure() -> float:  # once: the pool ends with it
        with pool:
            started = time.perf_counter()
            list(pool.map(work, range(threads), [share] * threads))
            return share * threads / (time.perf_counter() - started)

    return measure


def measure_throughput(makers: dict[str, Callable[[], Measure]], rounds: int) -> dict[str, float]:
    """Median images/s per runner over ``rounds`` interleaved rounds; each runner is set up
    (untimed) right before its turn and dropped after it, so only one holds memory at a time."""
    samples: dict[str, list[float]] = {name: [] for name in makers}
    for _ in range(rounds):
        for name, make in makers.items():
            samples[name].append(make()())
    return {name: statistics.median(values) for name, values in samples.items()}
