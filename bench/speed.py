"""Inference speed suite: ViT-B/16 and ViT-L/16 (random init; speed does not depend on weights).

Interleaved in one run, batch 1 and a larger batch, model only and end to end: PyTorch eager fp32
and bf16 autocast, the transformers pipeline, Optimum's ORTModelForImageClassification pipeline,
the OpenVINO peers of bench/peers.py (fp32 IR at its default precision, NNCF int8 weight
compression, NNCF post-training int8 made the documented way, our int8 ONNX file read by
OpenVINO), and this project's runtime with every variant the build produced (every row of the
variants table whose file exists, OpenVINO IR variants included). Then a throughput mode (every
core busy, images/s; bench/throughput.py). Also: preprocessing per image, import time, cold start,
peak RSS (fresh processes), and folder `infer` throughput against model-only throughput.

    python -m bench.speed [--models base large] [--rounds 5] [--batch 8] [--no-write]

Built models are cached under models/bench/vit-{base,large}/ (delete a folder to rebuild it).
``--no-write`` (for a busy machine) saves bench/results/speed-scratch.json and prints the tables
instead of writing BENCHMARKS.md and speed.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.common import BUSI, REPO, machine, save_json
from bench.peers import Runner, build_openvino_peers, openvino_runners, torch_bf16_runner
from bench.throughput import Measure, classifier_throughput, measure_throughput, openvino_throughput
from medvit_edge.runtime.manifest import Manifest
from medvit_edge.runtime.metadata import PIXEL_VALUES_INPUT
from medvit_edge.runtime.variants import VARIANTS

SIZES = {
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}


def medvit_variants(onnx_dir: Path) -> dict[str, Path]:
    """Every row of the variants table whose file the build produced, by variant name (a file two
    rows share, model.int8.onnx, goes by the row the manifest says made it). Raw-input twins take
    uint8 frames, not tensors: bench.raw_parity measures them."""
    manifest = Manifest.read(onnx_dir)
    made = {record.file: record.variant for record in manifest.variants} if manifest else {}
    return {
        row.name: onnx_dir / row.file_name
        for row in VARIANTS.values()
        if row.input == PIXEL_VALUES_INPUT
        and (onnx_dir / row.file_name).is_file()
        and made.get(row.file_name, row.name) == row.name
    }


def size_mb(path: Path) -> float:
    """The model's bytes on disk (an OpenVINO IR's .xml and its .bin together)."""
    weights = path.with_suffix(".bin")
    return (
        path.stat().st_size + (weights.stat().st_size if path.suffix == ".xml" and weights.is_file() else 0)
    ) / 1e6


# ExportConfig flags of variants beyond fp32/fp16/int8 that the build asks for when export has them
OPTIONAL_VARIANTS: tuple[str, ...] = ("openvino",)


def build_model(size: str, root: Path) -> Path:
    """A ViT-{B,L}/16 classifier folder (save_pretrained + preprocess.json), its variants, the
    ablations' files and the peers' files. Each step is skipped when its output exists (delete
    the folder to rebuild), so an interrupted build resumes."""
    from medvit_edge.export import ExportConfig, export

    folder = root / f"vit-{size}"
    if not (folder / "model.safetensors").is_file():
        _random_model(size, folder)
    common: dict[str, Any] = dict(
        run_dir=folder,
        int8=True,
        data=BUSI / "split.csv",
        data_split="test",
        calibration_data=BUSI / "split.csv",  # its train split (the random-init folder has none)
        max_validation_images=16,
        allow_degraded=True,
        int8_guard_search=False,
    )
    # the fused export is the ablation of the offline-fusion lever (off by default: it measured slower)
    if not (folder / "onnx-fused" / "manifest.json").is_file():
        export(ExportConfig(output=folder / "onnx-fused", optimize=True, **common))
    # every variant export can build here (the OpenVINO IR ones when this export offers them);
    # rebuilt when export has learnt a variant since the cached build
    offered = {f.name for f in dataclasses.fields(ExportConfig)}
    cfg = ExportConfig(fp16=True, **common, **{k: True for k in OPTIONAL_VARIANTS if k in offered})
    manifest = Manifest.read(folder / "onnx")
    if manifest is None or set(cfg.requested_variants()) - {r.variant for r in manifest.variants}:
        export(cfg)
    if not (folder / "onnx-optimum-avx2" / "model_quantized.onnx").is_file():
        optimum_avx2(folder)
    if not (folder / "onnx-static-s8s8" / "model.onnx").is_file():
        static_s8s8(folder)
    build_openvino_peers(folder)
    return folder


def _random_model(size: str, folder: Path) -> None:
    from transformers import ViTConfig, ViTForImageClassification

    from medvit_edge.io.checkpoint import save_model
    from medvit_edge.runtime.preprocess import PreprocessSpec

    labels = ["benign", "malignant", "normal"]
    config = ViTConfig(
        **SIZES[size],
        num_labels=3,
        id2label=dict(enumerate(labels)),
        label2id={k: i for i, k in enumerate(labels)},
    )
    save_model(ViTForImageClassification(config).eval(), PreprocessSpec(), folder)


def _stamp(source: Path, target: Path, variant: str) -> None:
    """Give a file made outside our exporter our metadata, so the same runtime can run it."""
    import onnx

    from medvit_edge.export.variants import write_metadata
    from medvit_edge.runtime.metadata import ModelMetadata

    props = {p.key: p.value for p in onnx.load(str(source), load_external_data=False).metadata_props}
    metadata = ModelMetadata.from_props(props)
    write_metadata(
        target, ModelMetadata(metadata.labels, metadata.preprocess, variant, metadata.source_sha256)
    )


def optimum_avx2(folder: Path) -> None:
    """What Optimum users pick for int8: ORTQuantizer with AutoQuantizationConfig.avx2, dynamic."""
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    target = folder / "onnx-optimum-avx2"
    quantizer = ORTQuantizer.from_pretrained(folder / "onnx", file_name="model.onnx")
    quantizer.quantize(save_dir=target, quantization_config=AutoQuantizationConfig.avx2(is_static=False))
    _stamp(folder / "onnx" / "model.onnx", target / "model_quantized.onnx", "int8-optimum-avx2")


def static_s8s8(folder: Path) -> None:
    """Static QDQ with int8 activations and weights, calibrated on 16 BUSI training images."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from medvit_edge.export.variants import _ArrayReader
    from medvit_edge.io.labelled import read_labelled_set
    from medvit_edge.runtime.images import load_image
    from medvit_edge.runtime.preprocess import PreprocessSpec, preprocess_batch

    images = read_labelled_set(BUSI / "split.csv", "train")[:16]
    pixels = preprocess_batch([load_image(i.path) for i in images], PreprocessSpec())
    target = folder / "onnx-static-s8s8" / "model.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    quantize_static(
        str(folder / "onnx" / "model.onnx"),
        str(target),
        _ArrayReader("pixel_values", iter(np.array_split(pixels, 4))),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        calibrate_method=CalibrationMethod.MinMax,
        op_types_to_quantize=["MatMul"],
        extra_options={"MatMulConstBOnly": True},
    )
    _stamp(folder / "onnx" / "model.onnx", target, "int8-static-s8s8")


def runners(folder: Path, threads: int) -> tuple[dict[str, Runner], dict[str, str]]:
    """name -> (model-only call on a preprocessed batch, end-to-end call on PIL images), and the
    inference precision each OpenVINO peer chose."""
    import onnxruntime as ort
    import torch
    from optimum.onnxruntime import ORTModelForImageClassification
    from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

    from medvit_edge.runtime.classifier import Classifier

    torch.set_num_threads(threads)
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    hf_pipe = pipeline("image-classification", model=model, image_processor=processor, device="cpu")
    # Spinning off in every onnxruntime session: run in turn, a session's busy-waiting workers
    # would otherwise steal the CPU from the next runner and distort the comparison.
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    ort_model = ORTModelForImageClassification.from_pretrained(
        folder / "onnx", file_name="model.onnx", session_options=options
    )
    ort_pipe = pipeline("image-classification", model=ort_model, image_processor=processor)

    def torch_run(batch: np.ndarray) -> Any:
        with torch.inference_mode():
            return model(pixel_values=torch.from_numpy(batch)).logits

    found: dict[str, Runner] = {
        "PyTorch eager fp32": (torch_run, lambda images: hf_pipe(images, batch_size=len(images))),
        "PyTorch bf16 autocast": torch_bf16_runner(model, hf_pipe),
        "Optimum ORTModel fp32": (
            lambda b: ort_model(pixel_values=torch.from_numpy(b)),
            lambda images: ort_pipe(images, batch_size=len(images)),
        ),
    }
    peers, precisions = openvino_runners(folder, threads)
    found.update(peers)
    for variant, path in medvit_variants(folder / "onnx").items():
        classifier = Classifier.load(path, device="cpu", threads=threads, spin=False)
        found[f"medvit-edge {variant}"] = (classifier.run, classifier.predict_proba)
    for name, path in ABLATIONS.items():
        extra = Classifier.load(folder / path, device="cpu", threads=threads, spin=False, verify=False)
        found[f"medvit-edge {name}"] = (extra.run, extra.predict_proba)
    return found, precisions


# Files of earlier levers measured beside the variants (see BENCHMARKS.md for why each was dropped).
ABLATIONS = {
    "int8, offline fusions": "onnx-fused/model.int8.onnx",
    "int8, Optimum avx2 preset": "onnx-optimum-avx2/model_quantized.onnx",
    "int8, static QDQ S8S8": "onnx-static-s8s8/model.onnx",
}


def throughput(folder: Path, threads: int, pixels: np.ndarray, images: int, rounds: int) -> dict[str, float]:
    """images/s with every core busy: OpenVINO peers (THROUGHPUT hint, async queue) and every
    medvit-edge variant (one single-thread Classifier per core); bench/throughput.py."""
    peers = build_openvino_peers(folder)
    makers: dict[str, Callable[[], Measure]] = {
        name: (lambda path=path: openvino_throughput(path, threads, pixels, images))
        for name, path in peers.items()
    }
    for variant, path in medvit_variants(folder / "onnx").items():
        makers[f"medvit-edge {variant}"] = lambda path=path: classifier_throughput(
            path, threads, pixels, images
        )
    return measure_throughput(makers, rounds)


def interleaved(found: dict[str, Any], images: list[Image.Image], batch: int, rounds: int) -> dict[str, Any]:
    """Every runner once per round, rounds repeated: slow drifts of the machine hit all alike."""
    from medvit_edge.runtime.preprocess import PreprocessSpec, preprocess_batch

    pixels = {n: preprocess_batch(images[:n], PreprocessSpec()) for n in (1, batch)}
    calls = [(name, n, mode) for name in found for n in (1, batch) for mode in ("model", "end-to-end")]
    times: dict[tuple[str, int, str], list[float]] = {c: [] for c in calls}
    for name, n, mode in calls:  # warm-up
        _call(found[name], mode, pixels[n], images[:n])
    for _ in range(rounds):
        for call in calls:
            name, n, mode = call
            started = time.perf_counter()
            _call(found[name], mode, pixels[n], images[:n])
            times[call].append((time.perf_counter() - started) * 1000 / n)
    return {f"{name}|{n}|{mode}": statistics.median(t) for (name, n, mode), t in times.items()}


def _call(runner: tuple[Callable, Callable], mode: str, pixels: np.ndarray, images: list) -> Any:
    return runner[0](pixels) if mode == "model" else runner[1](images)


def preprocessing_ms(image: Image.Image) -> dict[str, float]:
    from transformers import ViTImageProcessor

    from medvit_edge.runtime.preprocess import PreprocessSpec, preprocess
    from medvit_edge.timing import measure_latency
    from medvit_edge.train.models import torchvision_transforms

    spec = PreprocessSpec()
    hf = ViTImageProcessor()
    tv = torchvision_transforms(spec, train=False)
    return {
        "medvit-edge (numpy + Pillow)": measure_latency(lambda i: preprocess(image, spec), 200).p50_ms,
        "torchvision": measure_latency(lambda i: tv(image), 200).p50_ms,
        "ViTImageProcessor": measure_latency(lambda i: hf(image, return_tensors="np"), 200).p50_ms,
    }


# Peak RSS from VmHWM: ru_maxrss survives fork/exec on Linux and would report the parent's peak.
PROBE = """
import sys, time, json
t0 = time.perf_counter()
from medvit_edge import Classifier
t1 = time.perf_counter()
clf = Classifier.load(sys.argv[1], device="cpu")
t2 = time.perf_counter()
clf.predict(sys.argv[2])
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_prediction_s": t3 - t2,
                  "peak_rss_mb": int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024}))
"""


def fresh_process(model: Path, image: Path) -> dict[str, float]:
    """Process start to first prediction, and peak RSS, in a new interpreter."""
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(model), str(image)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    data = json.loads(out.stdout.strip().splitlines()[-1])
    data["process_to_first_prediction_s"] = time.perf_counter() - started
    return data


def import_time() -> float:
    code = "import time; t = time.perf_counter(); import medvit_edge.runtime.classifier; print(time.perf_counter() - t)"
    samples = [
        float(
            subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
            ).stdout
        )
        for _ in range(5)
    ]
    return statistics.median(samples)


def infer_vs_model(folder: Path, batch: int) -> dict[str, float]:
    """Folder `infer` (decode + preprocess overlapped) against the model alone, same batch size."""
    from medvit_edge.inference.command import InferConfig, infer
    from medvit_edge.runtime.classifier import Classifier

    model = folder / "onnx" / "model.int8.onnx"
    classifier = Classifier.load(model, device="cpu")
    test = [str(p) for p in sorted((BUSI / "benign").glob("*.png"))[:96]]
    pixels = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    classifier.run(pixels)
    started = time.perf_counter()
    for _ in range(len(test) // batch):
        classifier.run(pixels)
    model_only = (len(test) // batch) * batch / (time.perf_counter() - started)
    started = time.perf_counter()
    infer(InferConfig(model=model, inputs=test, batch_size=batch, progress=False), classifier=classifier)
    folder_rate = len(test) / (time.perf_counter() - started)
    return {
        "images": len(test),
        "model_only_ips": model_only,
        "infer_ips": folder_rate,
        "ratio": folder_rate / model_only,
    }


def fresh_processes(folder: Path) -> dict[str, dict[str, float]]:
    image = BUSI / "benign" / "benign (1).png"
    return {variant: fresh_process(path, image) for variant, path in medvit_variants(folder / "onnx").items()}


def remeasure_fresh_processes(root: Path) -> None:
    """Re-run the cold-start / peak-RSS probes into an existing speed.json, and re-render."""
    from bench.common import RESULTS
    from bench.speed_report import write_section

    results = json.loads((RESULTS / "speed.json").read_text())
    for size, data in results["models"].items():
        data["fresh_process"] = fresh_processes(root / f"vit-{size}")
    results["import_medvit_edge_runtime_s"] = import_time()
    save_json("speed", results)
    write_section(results)


def measure_model(size: str, args: argparse.Namespace, images: list[Image.Image]) -> dict[str, Any]:
    """Every measurement of one model size (its files built first, or reused)."""
    import gc

    from medvit_edge.runtime.preprocess import PreprocessSpec, preprocess_batch

    started = time.perf_counter()
    folder = build_model(size, args.root)
    build_s = time.perf_counter() - started
    found, precisions = runners(folder, args.threads)
    timing = interleaved(found, images, args.batch, args.rounds)
    del found
    gc.collect()  # the latency runners' memory is gone before the throughput runners load
    pixels = preprocess_batch(images, PreprocessSpec())
    rates = throughput(folder, args.threads, pixels, args.throughput_images, args.throughput_rounds)
    sizes = {f"medvit-edge {v}": size_mb(p) for v, p in medvit_variants(folder / "onnx").items()}
    sizes.update({name: size_mb(path) for name, path in build_openvino_peers(folder).items()})
    return {
        "ms_per_image": timing,
        "images_per_s_all_cores": rates,
        "throughput_images": args.throughput_images,
        "throughput_rounds": args.throughput_rounds,
        "openvino_inference_precision": precisions,
        "fresh_process": fresh_processes(folder),
        "infer_vs_model": infer_vs_model(folder, args.batch),
        "sizes_mb": sizes,
        "build_or_reuse_s": build_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["base", "large"], choices=list(SIZES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--throughput-images", type=int, default=16, help="images per throughput run")
    # each throughput run is a long one already; 3 rounds keep `--models base` under 15 min
    parser.add_argument("--throughput-rounds", type=int, default=3)
    parser.add_argument("--root", type=Path, default=REPO / "models" / "bench")
    parser.add_argument("--fresh-only", action="store_true", help="re-measure only the fresh-process rows")
    parser.add_argument(
        "--no-write",
        dest="write",
        action="store_false",
        help="busy machine: save results/speed-scratch.json and print the tables; BENCHMARKS.md untouched",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for name in ("bench", "medvit_edge", "nncf"):  # progress; onnxruntime's quantizer stays quiet
        logging.getLogger(name).setLevel(logging.INFO)
    if args.fresh_only:
        remeasure_fresh_processes(args.root)
        return
    images = [Image.open(p).convert("RGB") for p in sorted((BUSI / "malignant").glob("*.png"))[: args.batch]]
    results: dict[str, Any] = {
        "machine": machine(),
        "threads": args.threads,
        "rounds": args.rounds,
        "batch": args.batch,
        "models": {},
    }
    started = time.perf_counter()
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (600, 500, 3), dtype=np.uint8))
    results["preprocessing_ms_500x600"] = preprocessing_ms(big)
    results["import_medvit_edge_runtime_s"] = import_time()
    for size in args.models:
        results["models"][size] = measure_model(size, args, images)
        print(json.dumps(results["models"][size], indent=1), file=sys.stderr)
    results["wall_s"] = time.perf_counter() - started
    from bench.speed_report import render, write_section

    if args.write:
        save_json("speed", results)
        write_section(results)
    else:
        print(f"scratch results: {save_json('speed-scratch', results)}", file=sys.stderr)
        print(render(results))


if __name__ == "__main__":
    main()
