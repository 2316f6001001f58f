"""Facts about this machine (CPU model and ISA, memory) for reports and benchmarks."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

# The cpuinfo flags that decide which kernels int8 and bf16 code can use, most capable first.
ISA_FLAGS = (
    ("amx_tile", "AMX"),
    ("avx512f", "AVX-512"),
    ("avx512_vnni", "AVX-512 VNNI"),
    ("avx_vnni", "AVX-VNNI"),
    ("avx512_bf16", "BF16"),
    ("avx2", "AVX2"),
    ("fma", "FMA"),
    ("asimddp", "ARM dot product"),
)


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="ignore")
    except OSError:
        return ""


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one, else what platform knows."""
    match = re.search(r"^model name\s*:\s*(.+)$", _cpuinfo(), re.M)
    return match.group(1).strip() if match else platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    match = re.search(r"^(?:flags|Features)\s*:(.*)$", _cpuinfo(), re.M)
    return set(match.group(1).split()) if match else set()


def cpu_isa() -> list[str]:
    """The instruction-set extensions that matter here, e.g. ``['AVX-512', 'AVX-512 VNNI']``."""
    flags = cpu_flags()
    names = [name for flag, name in ISA_FLAGS if flag in flags]
    if "AVX-512" in names and "AVX2" in names:
        names.remove("AVX2")  # implied
    return names


def machine_line() -> str:
    """One line for reports: CPU model (ISA), logical CPUs, memory, OS."""
    isa = cpu_isa()
    memory = ""
    match = re.search(r"MemTotal:\s+(\d+)", _read("/proc/meminfo"))
    if match:
        memory = f", {int(match.group(1)) / 1024**2:.0f} GiB"
    cpu = cpu_name() + (f" ({', '.join(isa)})" if isa else "")
    return f"{cpu}, {os.cpu_count()} logical CPUs{memory}, {platform.system()}"


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="ignore")
    except OSError:
        return ""


def _status_mb(key: str) -> float:
    match = re.search(rf"^{key}:\s+(\d+) kB", _read("/proc/self/status"), re.M)
    return int(match.group(1)) / 1024 if match else 0.0


def rss_mb() -> float:
    """Resident memory of this process now (0 where /proc is missing)."""
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    """Peak resident memory of this process. VmHWM, not ru_maxrss: ru_maxrss survives fork/exec
    on Linux and would report the parent's peak in a child."""
    return _status_mb("VmHWM")


def software_versions(packages: tuple[str, ...]) -> dict[str, str]:
    """Installed versions of ``packages`` (those not installed are left out), and Python's."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in packages:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found
