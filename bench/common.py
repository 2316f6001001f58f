"""Shared pieces of the benchmarks: machine description, timing, and BENCHMARKS.md sections."""

from __future__ import annotations

import json
import os
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BUSI = REPO.parent / "shared" / "data" / "busi"
RESULTS = REPO / "bench" / "results"
BENCHMARKS_MD = REPO / "BENCHMARKS.md"


def machine() -> str:
    """CPU model, cores, memory and GPU (if torch sees one), in one line."""
    from medvit_edge.evaluate import cpu_name

    cpu = cpu_name()
    try:
        flags = set(re.search(r"^flags\s*:(.*)$", Path("/proc/cpuinfo").read_text(), re.M).group(1).split())
        isa = [
            name
            for flag, name in (
                ("avx512f", "AVX-512"),
                ("avx512_vnni", "AVX-512 VNNI"),
                ("avx512_bf16", "BF16"),
                ("avx2", "AVX2"),
                ("fma", "FMA"),
            )
            if flag in flags
        ]
        if "avx512f" in flags:
            isa.remove("AVX2")
        cpu += f" ({', '.join(isa)})" if isa else ""
    except (OSError, AttributeError):
        pass
    memory = ""
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        memory = f", {kb / 1024**2:.0f} GiB"
    except (OSError, AttributeError):
        pass
    gpu = ""
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs{memory}{gpu}"


def median_ms(run: Callable[[], Any], repeats: int, warmup: int = 1) -> dict[str, float]:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "runs": repeats,
    }


def save_json(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def update_section(title: str, body: str) -> None:
    """Replace (or append) the ``## title`` section of BENCHMARKS.md."""
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else "# Benchmarks\n"
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    BENCHMARKS_MD.write_text(text.rstrip() + "\n")
