"""int8 speed levers, each measured against OpenVINO NNCF post-training int8 made the documented way.

Issue 14's goal: medvit-edge's fastest validated variant at most 0.9x the latency of
``nncf.quantize(model, dataset, model_type=TRANSFORMER)`` (ViT-L/16, batch 1, 2 threads). Every
lever NNCF, OpenVINO and onnxruntime offer for this graph gets one row here, built from the same
``model.onnx`` (random init: speed does not depend on the weights) and timed in one interleaved run
(5-call blocks, every runner once per round, medians), so drifts of the machine hit all rows alike.
Whether a lever is kept is decided from these ratios plus the accuracy guard on the BUSI model.

    python -m bench.int8_levers [--models base large] [--rounds 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import BUSI, REPO, machine, save_json, update_section

ROOT = REPO / "models" / "bench-levers"
BASELINE = "OpenVINO NNCF PTQ int8, documented"


@dataclass(frozen=True)
class Lever:
    name: str
    engine: str  # "ort" or "ov"
    file: str  # built under the model folder
    build: Callable[[Path, Path, np.ndarray], None]  # (model.onnx, target, calibration) -> file
    compile: dict[str, str] = field(default_factory=dict)  # OpenVINO properties at compile time
    note: str = ""


def _ort_dynamic(target_name: str, attention: bool = False) -> Callable[[Path, Path, np.ndarray], None]:
    def build(source: Path, target: Path, calibration: np.ndarray) -> None:
        from medvit_edge.export import variants
        from medvit_edge.export.config import Int8Config

        saved = dict(variants._QUANT_OPTIONS)
        variants._QUANT_OPTIONS["MatMulConstBOnly"] = not attention
        try:
            variants.onnx_to_int8_dynamic(source, target, Int8Config.for_target(target_name))
        finally:
            variants._QUANT_OPTIONS.update(saved)

    return build


def _ort_rewritten(*rewrites: str) -> Callable[[Path, Path, np.ndarray], None]:
    """bench/graph_levers.py's rewrites of the fp32 graph, in order, then the default dynamic int8."""

    def build(source: Path, target: Path, calibration: np.ndarray) -> None:
        from bench import graph_levers
        from bench.attention_fusion import fuse_attention
        from bench.speed import SIZES
        from medvit_edge.export.config import Int8Config
        from medvit_edge.export.variants import onnx_to_int8_dynamic

        size = SIZES[source.parent.name.removeprefix("vit-")]
        heads, hidden = size["num_attention_heads"], size["hidden_size"]
        steps: dict[str, Callable[[Path, Path], Any]] = {
            "qkv": graph_levers.merge_qkv,
            "patch": graph_levers.patch_embedding_as_matmul,
            "mha": lambda a, b: fuse_attention(a, b, heads),
            "ort": lambda a, b: graph_levers.ort_transformer_optimize(a, b, heads, hidden),
        }
        current, steps_written = source, []
        for rewrite in rewrites:
            current = target.with_name(f"{target.stem}.{rewrite}.onnx")
            steps[rewrite](steps_written[-1] if steps_written else source, current)
            steps_written.append(current)
        onnx_to_int8_dynamic(current, target, Int8Config.for_target("portable"))
        for written in steps_written:  # fp32 intermediates: a ViT-L copy is 1.2 GB each
            written.unlink()

    return build


def _ort_static(source: Path, target: Path, calibration: np.ndarray) -> None:
    from medvit_edge.export.config import Int8Config
    from medvit_edge.export.variants import onnx_to_int8_static

    onnx_to_int8_static(source, target, Int8Config.for_target("avx512_vnni"), calibration[:32])


def _nncf_documented(source: Path, target: Path, calibration: np.ndarray) -> None:
    """https://docs.openvino.ai/.../quantizing-models-post-training/basic-quantization-flow.html:
    convert, wrap a calibration set in nncf.Dataset, nncf.quantize with the transformer model type,
    save; nothing else set."""
    import nncf
    import openvino as ov

    model = ov.convert_model(str(source))
    dataset = nncf.Dataset([calibration[i : i + 1] for i in range(len(calibration))])
    quantized = nncf.quantize(model, dataset, model_type=nncf.ModelType.TRANSFORMER)
    ov.save_model(quantized, str(target))


def _ours(**changes: Any) -> Callable[[Path, Path, np.ndarray], None]:
    """export's openvino-int8 builder with some settings changed."""

    def build(source: Path, target: Path, calibration: np.ndarray) -> None:
        from medvit_edge.export.openvino import openvino_to_int8
        from medvit_edge.export.openvino_config import OpenVinoInt8Config

        openvino_to_int8(source, target, replace(OpenVinoInt8Config(), **changes), calibration)

    return build


def _weight_compression(source: Path, target: Path, calibration: np.ndarray) -> None:
    import nncf
    import openvino as ov

    compressed = nncf.compress_weights(ov.convert_model(str(source)), mode=nncf.CompressWeightsMode.INT8_ASYM)
    ov.save_model(compressed, str(target))


def _copy_onnx(source: Path, target: Path, calibration: np.ndarray) -> None:
    import shutil

    shutil.copyfile(source, target)


LEVERS: tuple[Lever, ...] = (
    Lever(BASELINE, "ov", "nncf-documented.xml", _nncf_documented),
    Lever("onnxruntime fp32", "ort", "fp32.onnx", _copy_onnx),
    Lever(
        "onnxruntime int8 dynamic, 7-bit weights (export default)",
        "ort",
        "ort-int8-7bit.onnx",
        _ort_dynamic("portable"),
    ),
    Lever(
        "onnxruntime int8 dynamic, 7-bit, spinning threads",
        "ort",
        "ort-int8-7bit.onnx",
        _ort_dynamic("portable"),
        {"session.intra_op.allow_spinning": "1"},
    ),
    Lever(
        "onnxruntime int8 dynamic, 7-bit, fused MultiHeadAttention",
        "ort",
        "ort-int8-mha.onnx",
        _ort_rewritten("mha"),
    ),
    Lever(
        "onnxruntime int8 dynamic, 7-bit, fused MultiHeadAttention, spinning threads",
        "ort",
        "ort-int8-mha.onnx",
        _ort_rewritten("mha"),
        {"session.intra_op.allow_spinning": "1"},
    ),
    Lever(
        "onnxruntime int8 dynamic, 7-bit, Q/K/V as one MatMul, spinning threads",
        "ort",
        "ort-int8-qkv.onnx",
        _ort_rewritten("qkv"),
        {"session.intra_op.allow_spinning": "1"},
    ),
    Lever(
        "onnxruntime int8 dynamic, 7-bit, patch embedding in int8, spinning threads",
        "ort",
        "ort-int8-patch.onnx",
        _ort_rewritten("patch"),
        {"session.intra_op.allow_spinning": "1"},
    ),
    Lever(
        "onnxruntime int8 dynamic, 7-bit, Q/K/V one MatMul + patch embedding int8 + fused MultiHeadAttention, spinning",
        "ort",
        "ort-int8-qkv-patch-mha.onnx",
        _ort_rewritten("qkv", "patch", "mha"),
        {"session.intra_op.allow_spinning": "1"},
    ),
    Lever(
        "onnxruntime int8 dynamic, 7-bit, onnxruntime transformer optimizer (+ our MultiHeadAttention), spinning",
        "ort",
        "ort-int8-ortopt.onnx",
        _ort_rewritten("mha", "ort"),
        {"session.intra_op.allow_spinning": "1"},
    ),
    Lever(
        "onnxruntime int8 dynamic, 7-bit, spinning + dynamic block scheduling",
        "ort",
        "ort-int8-7bit.onnx",
        _ort_dynamic("portable"),
        {"session.intra_op.allow_spinning": "1", "session.dynamic_block_base": "4"},
    ),
    Lever(
        "onnxruntime int8 dynamic, 7-bit, spinning + denormals as zero",
        "ort",
        "ort-int8-7bit.onnx",
        _ort_dynamic("portable"),
        {"session.intra_op.allow_spinning": "1", "session.set_denormal_as_zero": "1"},
    ),
    Lever(
        "onnxruntime int8 dynamic, 8-bit weights", "ort", "ort-int8-8bit.onnx", _ort_dynamic("avx512_vnni")
    ),
    Lever(
        "onnxruntime int8 dynamic + attention MatMuls",
        "ort",
        "ort-int8-attn.onnx",
        _ort_dynamic("avx512_vnni", attention=True),
    ),
    Lever("onnxruntime int8 static QDQ (u8 activations)", "ort", "ort-int8-static.onnx", _ort_static),
    Lever(
        "documented + f32 float layers",
        "ov",
        "nncf-documented.xml",
        _nncf_documented,
        {"INFERENCE_PRECISION_HINT": "f32"},
    ),
    Lever(
        "documented + bf16 float layers (explicit)",
        "ov",
        "nncf-documented.xml",
        _nncf_documented,
        {"INFERENCE_PRECISION_HINT": "bf16"},
    ),
    Lever(
        "documented + CPU pinning off",
        "ov",
        "nncf-documented.xml",
        _nncf_documented,
        {"ENABLE_CPU_PINNING": "NO"},
    ),
    Lever(
        "documented + TBB static partitioner",
        "ov",
        "nncf-documented.xml",
        _nncf_documented,
        {"TBB_PARTITIONER": "STATIC"},
    ),
    Lever(
        "documented + denormals flushed",
        "ov",
        "nncf-documented.xml",
        _nncf_documented,
        {"CPU_DENORMALS_OPTIMIZATION": "YES"},
    ),
    Lever(
        "NNCF PERFORMANCE preset (symmetric activations)",
        "ov",
        "nncf-performance.xml",
        _ours(preset="performance", overflow_fix="disable", inference_precision="default"),
    ),
    Lever(
        "NNCF SmoothQuant off",
        "ov",
        "nncf-no-sq.xml",
        _ours(smooth_quant_alpha=-1, overflow_fix="disable", inference_precision="default"),
    ),
    Lever("NNCF 7-bit weights (overflow fix)", "ov", "nncf-7bit.xml", _ours(inference_precision="default")),
    Lever("NNCF int8 weight compression (weights only)", "ov", "nncf-wc8.xml", _weight_compression),
    Lever(
        "weight compression + dynamic activation quantization (group 32)",
        "ov",
        "nncf-wc8.xml",
        _weight_compression,
        {"DYNAMIC_QUANTIZATION_GROUP_SIZE": "32"},
    ),
    Lever(
        "weight compression + dynamic activation quantization (per token)",
        "ov",
        "nncf-wc8.xml",
        _weight_compression,
        {"DYNAMIC_QUANTIZATION_GROUP_SIZE": "4294967295"},
    ),
)


def build_onnx(size: str) -> Path:
    """model.onnx of a random-init ViT-{B,L}/16 with three labels (bench.speed's sizes)."""
    folder = ROOT / f"vit-{size}"
    onnx_path = folder / "model.onnx"
    if onnx_path.is_file():
        return folder
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    from bench.speed import SIZES
    from medvit_edge.checkpoint import save_model
    from medvit_edge.export.variants import fix_input_shape, hf_to_onnx
    from medvit_edge.preprocess import PreprocessSpec

    torch.manual_seed(0)
    labels = ["benign", "malignant", "normal"]
    config = ViTConfig(
        **SIZES[size],
        num_labels=3,
        id2label=dict(enumerate(labels)),
        label2id={k: i for i, k in enumerate(labels)},
    )
    save_model(ViTForImageClassification(config).eval(), PreprocessSpec(), folder / "hf")
    hf_to_onnx(folder / "hf", folder)
    fix_input_shape(onnx_path, 224)
    return folder


def calibration_images(count: int = 64) -> np.ndarray:
    from medvit_edge.images import load_image
    from medvit_edge.labelled import read_labelled_set
    from medvit_edge.preprocess import PreprocessSpec, preprocess_batch

    images = read_labelled_set(BUSI / "split.csv", "train")[:count]
    return preprocess_batch([load_image(image.path) for image in images], PreprocessSpec())


def runner(lever: Lever, path: Path, threads: int) -> Callable[[np.ndarray], Any]:
    if lever.engine == "ort":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        # spinning off unless the lever turns it on: a spinning pool would steal the next runner's CPU
        entries = {"session.intra_op.allow_spinning": "0", **lever.compile}
        for key, value in entries.items():
            options.add_session_config_entry(key, value)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x})
    import openvino as ov

    config = {"INFERENCE_NUM_THREADS": str(threads), "PERFORMANCE_HINT": "LATENCY", **lever.compile}
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x})


def interleaved(
    runners: dict[str, Callable[[np.ndarray], Any]], rounds: int, calls: int = 5
) -> dict[str, float]:
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    for run in runners.values():
        for _ in range(3):
            run(x)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            started = time.perf_counter()
            for _ in range(calls):
                run(x)
            times[name].append((time.perf_counter() - started) * 1000 / calls)
            time.sleep(0.05)  # an onnxruntime pool that spins stops before the next runner starts
    return {name: statistics.median(values) for name, values in times.items()}


def build_all(size: str) -> Path:
    folder = build_onnx(size)
    calibration = calibration_images()
    for lever in LEVERS:
        target = folder / lever.file
        if not target.is_file():
            print(f"building {lever.file}", file=sys.stderr, flush=True)
            lever.build(folder / "model.onnx", target, calibration)
    return folder


def measure(size: str, rounds: int, threads: int) -> dict[str, Any]:
    folder = build_all(size)
    runners = {lever.name: runner(lever, folder / lever.file, threads) for lever in LEVERS}
    return {
        "ms": interleaved(runners, rounds),
        "sizes_mb": {lever.name: _size_mb(folder / lever.file) for lever in LEVERS},
    }


def _size_mb(path: Path) -> float:
    companion = path.with_suffix(".bin")
    return (path.stat().st_size + (companion.stat().st_size if companion.exists() else 0)) / 1e6


def render(results: dict[str, Any]) -> str:
    sizes = list(results["models"])
    lines = [
        f"Machine: {results['machine']}. Command: `python -m bench.int8_levers --models {' '.join(sizes)} "
        f"--rounds {results['rounds']} --threads {results['threads']}` (load average {results['load']} "
        "at the start). Batch 1, model only, random-init ViT/16, medians of interleaved 5-call blocks; "
        "× = latency relative to the documented NNCF post-training int8 (lower is faster).",
        "",
        "| lever | " + " | ".join(f"ViT-{s[0].upper()} ms | ×" for s in sizes) + " |",
        "|---|" + "---|---|" * len(sizes),
    ]
    for lever in LEVERS:
        cells = []
        for size in sizes:
            ms = results["models"][size]["ms"]
            cells += [f"{ms[lever.name]:.1f}", f"{ms[lever.name] / ms[BASELINE]:.2f}"]
        lines.append(f"| {lever.name} | " + " | ".join(cells) + " |")
    return "\n".join([*lines, "", *verdict(results), "", CONCLUSIONS])


# The shipped int8 (onnxruntime, dynamic, 7-bit weights) as users run it: Classifier.load spins.
SHIPPED = "onnxruntime int8 dynamic, 7-bit, spinning threads"
GOAL = 0.9  # issue 14: at most 0.9x the documented NNCF int8 latency (ViT-L, batch 1, 2 threads)


def verdict(results: dict[str, Any]) -> list[str]:
    lines = []
    for size, data in results["models"].items():
        ms = data["ms"]
        ours = {name: value for name, value in ms.items() if name.startswith("onnxruntime int8")}
        best = min(ours, key=ours.__getitem__)
        ratio = ours[best] / ms[BASELINE]
        lines.append(
            f"- ViT-{size[0].upper()}: fastest medvit-edge int8 row `{best}` at {ratio:.2f}× the documented "
            f"NNCF int8; the shipped default as the runtime runs it ({SHIPPED}) {ms[SHIPPED] / ms[BASELINE]:.2f}×. "
            f"Goal ≤ {GOAL}×: **{'met' if ratio <= GOAL else 'not met'}**."
        )
    return lines


CONCLUSIONS = """\
Kept or dropped, and why:
- **Kept**: onnxruntime dynamic int8 with 7-bit weights (the export default: right on every CPU,
  and 8-bit weights bought nothing measurable here), run with spinning worker threads (the
  runtime's default; `spin=False` trades ~5% latency for no busy-waiting).
- **Dropped**: attention's activation MatMuls in int8 (±1%, less accurate); static QDQ
  (13–23% slower: its Q/DQ pairs are not fused into the integer GEMMs on this CPU); the
  MultiHeadAttention fusion (`bench/attention_fusion.py`: onnxruntime's optimizer does not match
  the exported attention, so we fuse it ourselves; ≈1%, within noise); dynamic block scheduling
  and denormals-as-zero (noise). Also dropped, from `bench/graph_levers.py`: Q/K/V as one
  3×-wide MatMul per layer, the patch embedding as an int8 MatMul instead of a float Conv, and
  the three together with the MultiHeadAttention fusion (each 1–2%, the three together 2% on
  ViT-L and nothing on ViT-B: not worth a graph rewrite in every export); onnxruntime's own
  transformer optimizer (SkipLayerNormalization, BiasGelu) 5–10% *slower* (its fused nodes stop
  the runtime's int8 MatMul fusions; export's `--optimize` stays off for this reason).
- **OpenVINO**: every NNCF setting (PERFORMANCE preset, SmoothQuant off, 7-bit weights) and every
  plugin setting (f32/bf16 float layers, pinning, TBB partitioner, denormals) lands within ±2% of
  the documented recipe; weight-only compression is 1.5× slower (the activations stay float).
  Export's `openvino-int8` uses the PERFORMANCE preset without SmoothQuant and 7-bit weights,
  chosen for accuracy (closer to PyTorch on the BUSI model), not speed.
- **Why no lever reaches 0.9× here**: profiled on ViT-B, int8 GEMMs are ~72% of onnxruntime's
  time (the rest: float attention MatMuls ~10%, GELU ~4%, patch-embedding Conv ~3%, LayerNorm
  ~3%, transposes ~2%; the rewrites above each remove part of one of these) and ~92% of OpenVINO's, and both libraries' int8 GEMM kernels run this CPU's AVX-512 VNNI
  at the same speed; what remains after them (attention in fp32, GELU, LayerNorm, transposes:
  ~16 ms of ~65 in onnxruntime) is where onnxruntime is slower and OpenVINO faster, and the
  spinning pool wins back about 5%. On Intel CPUs with AMX, OpenVINO's int8 uses the AMX tiles
  and onnxruntime's does not (issue 14's table: 50 vs 67 ms ViT-B): there `openvino-int8` is the
  variant to deploy (export measures and recommends it), not onnxruntime's.
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["base", "large"], choices=["base", "large"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print only (a busy machine)")
    parser.add_argument("--build-only", action="store_true", help="build the files, time nothing")
    args = parser.parse_args()
    import os

    results: dict[str, Any] = {
        "machine": machine(),
        "threads": args.threads,
        "rounds": args.rounds,
        "load": round(os.getloadavg()[0], 2),
        "models": {},
    }
    if args.build_only:
        for size in args.models:
            build_all(size)
        return
    for size in args.models:
        results["models"][size] = measure(size, args.rounds, args.threads)
        print(json.dumps(results["models"][size]["ms"], indent=1), file=sys.stderr)
    print(render(results))
    if not args.no_write:
        save_json("int8_levers", results)
        update_section("int8 speed levers against OpenVINO NNCF (CPU)", render(results))


if __name__ == "__main__":
    main()
