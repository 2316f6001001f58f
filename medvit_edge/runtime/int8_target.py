"""Which CPUs compute an int8 file exactly, and a warning when this one does not.

onnxruntime runs int8 MatMuls as uint8 activations x int8 weights. On x86 without VNNI its
kernel multiplies with ``vpmaddubsw``, which adds pairs of products into int16 and saturates
when both weights of a pair are large (255 x 127 x 2 > 32767): a file with full 8-bit weights
then gives results that differ from the ones it was validated with. 7-bit weights (onnxruntime's
``reduce_range``) keep every pair sum in range, so such a file gives its validated results on
every CPU, up to float rounding (which dynamic quantization can turn into a step of one level).
VNNI (``vpdpbusd``) and ARM64's dot products accumulate in int32 and never saturate.

``export --target`` records the target and the weight bits in the file's ``quantization``
metadata; ``Classifier.load`` calls ``warn_if_outside_target``.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from medvit_edge.system import cpu_flags

logger = logging.getLogger(__name__)

Int8Target = Literal["portable", "avx2", "avx512_vnni", "arm64"]
HostKind = Literal["x86-vnni", "x86", "arm64", "unknown"]
VNNI_FLAGS = ("avx512_vnni", "avx_vnni")


@dataclass(frozen=True)
class TargetRule:
    weight_bits: int
    right_on: tuple[HostKind, ...]  # host kinds whose int8 kernels never saturate on the file
    description: str


ALL_HOSTS: tuple[HostKind, ...] = ("x86-vnni", "x86", "arm64", "unknown")
TARGETS: dict[str, TargetRule] = {
    "portable": TargetRule(7, ALL_HOSTS, "7-bit weights: right on every CPU, no saturation"),
    "avx2": TargetRule(7, ALL_HOSTS, "7-bit weights (the old name of portable): right on every CPU"),
    "avx512_vnni": TargetRule(8, ("x86-vnni", "arm64"), "8-bit weights: x86 with VNNI, ARM64"),
    "arm64": TargetRule(8, ("arm64", "x86-vnni"), "8-bit weights: ARM64, x86 with VNNI"),
}


def host_kind(flags: Collection[str] | None = None, machine: str | None = None) -> HostKind:
    """What this CPU's int8 kernels are: x86 with or without VNNI, ARM64, or unknown (no cpuinfo)."""
    machine = (machine if machine is not None else platform.machine()).lower()
    if machine in ("arm64", "aarch64"):
        return "arm64"
    flags = cpu_flags() if flags is None else flags
    if not flags:
        return "unknown"
    return "x86-vnni" if any(flag in flags for flag in VNNI_FLAGS) else "x86"


def detect_target(flags: Collection[str] | None = None, machine: str | None = None) -> Int8Target:
    """``--target auto``: the target for the CPU that exports (not necessarily the one that deploys)."""
    kind = host_kind(flags, machine)
    return {"arm64": "arm64", "x86-vnni": "avx512_vnni"}.get(kind, "avx2")  # type: ignore[return-value]


def weight_bits(quantization: dict[str, Any]) -> int | None:
    """8 or 7 for an int8 file (files from before ``weight_bits`` was recorded: from
    ``reduce_range``); None for a float file."""
    if not quantization:
        return None
    bits = quantization.get("weight_bits")
    if isinstance(bits, int):
        return bits
    return 7 if quantization.get("reduce_range") else 8


def target_warning(
    quantization: dict[str, Any], flags: Collection[str] | None = None, machine: str | None = None
) -> str | None:
    """Why this CPU may not compute the file as validated, or None when it will (or cannot tell)."""
    bits = weight_bits(quantization)
    # 8-bit weights saturate only on x86 without VNNI; 7-bit weights nowhere
    if bits is None or bits < 8 or host_kind(flags, machine) != "x86":
        return None
    target = quantization.get("target", "unknown")
    return (
        f"int8 target {target} (8-bit weights) but this CPU has no VNNI: onnxruntime's u8 x s8 "
        "kernel (vpmaddubsw) can saturate, so results may differ from the validated ones; "
        "re-export with --target portable (7-bit weights) or run `medvit-edge check` here"
    )


def warn_if_outside_target(quantization: dict[str, Any], path: Path) -> None:
    """One warning line at load when the host CPU is outside the file's int8 target."""
    message = target_warning(quantization)
    if message:
        logger.warning("%s: %s", path, message)
