"""Token merging against OpenVINO NNCF post-training int8 made the documented way.

One interleaved run (5-call blocks, every runner once per round, medians) over ViT-B/16 and
ViT-L/16 (random init: speed depends on shapes, not weights; 224 px, batch 1, ``--threads``) at
each r in ``--r``: the merged fp32 graph and its dynamic int8 (7-bit weights, export's default) in
onnxruntime as the runtime runs them (spinning worker threads), and export's OpenVINO int8 (NNCF
with export's settings) of the merged graph; beside NNCF post-training int8 of the *unmerged* model
made the documented way (convert, ``nncf.quantize`` with the transformer model type, nothing else
set). r = 0 is the shipped unmerged ``model.onnx``. Peak RSS of each file in a fresh process (load + 3 calls).

``--run DIR`` (a trained BUSI run folder) adds the accuracy side: each file built the same way
from that model, run on its labelled ``--split`` images; agreement with the unmerged fp32 model,
accuracy and malignant recall, and whether it passes the guard (>= 98% agreement, <= 2 points
accuracy and <= 3 points malignant recall lost).

    python -m bench.merging [--models base large] [--r 0 4 8 12 16] [--rounds 7] [--threads 2]
                            [--run models/busi-224 ...] [--no-write]

``--models`` with no size skips the speed side; each part is saved in its own JSON
(``merging-speed.json``, ``merging-accuracy-RUN.json``) and the section is rendered from all of
them, so the parts can be measured at different times.

Files are cached under models/bench-levers/vit-{size}/merging/ (and DIR/merging-bench/).
Writes those JSONs, bench/results/merging.png and the BENCHMARKS.md section (``--no-write``:
``merging-scratch-*`` files and the section printed instead).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import BUSI, REPO, RESULTS, machine, save_json, update_section
from bench.merging_report import BASELINE, GUARD, SPEED_PATCHES, plot, render

ROOT = REPO / "models" / "bench-levers"
Build = Callable[[Path, Path, np.ndarray], None]  # (fp32 ONNX, target, calibration) -> file


@dataclass(frozen=True)
class Lever:
    """One file as a runner runs it: the engine, the file, how it is built, compile options."""

    name: str
    engine: str  # "ort" or "ov"
    file: str
    build: Build | None
    compile: dict[str, str] = field(default_factory=dict)  # session entries / OpenVINO properties


def _ort_dynamic(source: Path, target: Path, calibration: np.ndarray) -> None:
    """export's dynamic int8 (7-bit weights: the portable target, export's default)."""
    from medvit_edge.export.config import Int8Config
    from medvit_edge.export.variants import onnx_to_int8_dynamic

    onnx_to_int8_dynamic(source, target, Int8Config.for_target("portable"))


def _ours(source: Path, target: Path, calibration: np.ndarray) -> None:
    """export's openvino-int8 (NNCF with export's settings)."""
    from medvit_edge.export.openvino import openvino_to_int8
    from medvit_edge.export.openvino_config import OpenVinoInt8Config

    openvino_to_int8(source, target, OpenVinoInt8Config(), calibration)


def _nncf_documented(source: Path, target: Path, calibration: np.ndarray) -> None:
    """NNCF's basic post-training quantization flow as documented: convert, wrap a calibration
    set in nncf.Dataset, nncf.quantize with the transformer model type, save; nothing else set."""
    import nncf
    import openvino as ov

    model = ov.convert_model(str(source))
    dataset = nncf.Dataset([calibration[i : i + 1] for i in range(len(calibration))])
    quantized = nncf.quantize(model, dataset, model_type=nncf.ModelType.TRANSFORMER)
    ov.save_model(quantized, str(target))


TITLE = "Token merging (export --merge-tokens)"
SPIN = {"session.intra_op.allow_spinning": "1"}  # as Classifier.load runs them
# runtime -> (engine, file, builder from the fp32 graph, compile options)
RUNTIMES: dict[str, tuple[str, str, Any, dict[str, str]]] = {
    "onnxruntime fp32": ("ort", "fp32.onnx", None, SPIN),
    "onnxruntime int8": ("ort", "int8.onnx", _ort_dynamic, SPIN),
    "OpenVINO int8 (export's NNCF)": ("ov", "openvino-int8.xml", _ours, {}),
}
PEER_FILE = "nncf-documented.xml"  # beside the unmerged model.onnx, in the shared cache


def build_files(hf_dir: Path, folder: Path, r: int, calibration: np.ndarray, size: int) -> dict[str, Path]:
    """fp32 (r 0: the shipped Optimum export; else the merged graph), its int8 and OpenVINO int8."""
    from transformers import AutoModelForImageClassification

    from medvit_edge.export.variants import fix_input_shape, hf_to_onnx
    from medvit_edge.train.merging import MergeRequest, export_merged_onnx

    target = folder / f"r{r}"
    target.mkdir(parents=True, exist_ok=True)
    fp32 = target / "fp32.onnx"
    if not fp32.is_file():
        print(f"building {fp32}", file=sys.stderr, flush=True)
        if r == 0:
            hf_to_onnx(hf_dir, target)
            (target / "model.onnx").rename(fp32)
            fix_input_shape(fp32, size)
        else:
            model = AutoModelForImageClassification.from_pretrained(hf_dir, use_safetensors=True).eval()
            export_merged_onnx(model, MergeRequest(r), fp32, size, 17)
    paths = {}
    for name, (_, file, build, _) in RUNTIMES.items():
        path = target / file
        if build is not None and not path.is_file():
            print(f"building {path}", file=sys.stderr, flush=True)
            build(fp32, path, calibration)
        paths[name] = path
    return paths


def build_onnx(size: str) -> Path:
    """The folder of a random-init ViT-{B,L}/16 with three labels (bench.speed's sizes): the model
    in hf/, its unmerged model.onnx beside it; built once, then cached."""
    folder = ROOT / f"vit-{size}"
    onnx_path = folder / "model.onnx"
    if onnx_path.is_file():
        return folder
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    from bench.speed import SIZES
    from medvit_edge.export.variants import fix_input_shape, hf_to_onnx
    from medvit_edge.io.checkpoint import save_model
    from medvit_edge.runtime.preprocess import PreprocessSpec

    torch.manual_seed(0)
    labels = ["benign", "malignant", "normal"]
    ids = dict(enumerate(labels))
    config = ViTConfig(**SIZES[size], num_labels=3, id2label=ids, label2id={k: i for i, k in ids.items()})
    save_model(ViTForImageClassification(config).eval(), PreprocessSpec(), folder / "hf")
    hf_to_onnx(folder / "hf", folder)
    fix_input_shape(onnx_path, 224)
    return folder


def calibration_images(count: int = 64) -> np.ndarray:
    """The first ``count`` BUSI training images, preprocessed as the runtime does."""
    from medvit_edge.io.labelled import read_labelled_set
    from medvit_edge.runtime.images import load_image
    from medvit_edge.runtime.preprocess import PreprocessSpec, preprocess_batch

    images = read_labelled_set(BUSI / "split.csv", "train")[:count]
    return preprocess_batch([load_image(image.path) for image in images], PreprocessSpec())


def build_peer(fp32: Path, folder: Path, calibration: np.ndarray) -> Path:
    peer = folder / PEER_FILE
    if not peer.is_file():
        print(f"building {peer} (NNCF, documented flow)", file=sys.stderr, flush=True)
        _nncf_documented(fp32, peer, calibration)
    return peer


def speed(size: str, rs: list[int], calibration: np.ndarray) -> dict[str, Path]:
    """Every file of one model size: '{runtime}|r{r}' and the peer -> path."""
    folder = build_onnx(size)
    files: dict[str, Path] = {}
    for r in rs:
        built = build_files(folder / "hf", folder / "merging", r, calibration, 224)
        files.update({f"{name}|r{r}": path for name, path in built.items()})
    files[BASELINE] = build_peer(folder / "model.onnx", folder, calibration)
    return files


def _lever(key: str) -> Lever:
    name = key.split("|")[0]
    if name == BASELINE:
        return Lever(BASELINE, "ov", PEER_FILE, _nncf_documented)
    engine, file, build, options = RUNTIMES[name]
    return Lever(name, engine, file, build, options)


def runner(lever: Lever, path: Path, threads: int) -> Callable[[np.ndarray], Any]:
    """One call of the file on a batch, in its engine, with ``threads`` threads."""
    if lever.engine == "ort":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        # spinning off unless the lever turns it on: a spinning pool would steal the next runner's CPU
        for key, value in {"session.intra_op.allow_spinning": "0", **lever.compile}.items():
            options.add_session_config_entry(key, value)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x})
    import openvino as ov

    config = {"INFERENCE_NUM_THREADS": str(threads), "PERFORMANCE_HINT": "LATENCY", **lever.compile}
    request = ov.Core().compile_model(str(path), "CPU", config).create_infer_request()
    return lambda x: request.infer({0: x})


def interleaved(
    runners: dict[str, Callable[[np.ndarray], Any]], rounds: int, calls: int = 5
) -> dict[str, float]:
    """Median ms per call of each runner, every runner once per round (``calls`` calls a block),
    so a drift of the machine hits all of them alike."""
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


PROBE = """
import sys, json, numpy as np
engine, path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
x = np.zeros((1, 3, 224, 224), np.float32)
if engine == "ort":
    import onnxruntime as ort
    o = ort.SessionOptions(); o.intra_op_num_threads = threads
    s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
    run = lambda: s.run(None, {s.get_inputs()[0].name: x})
else:
    import openvino as ov
    c = ov.Core().compile_model(path, "CPU", {"INFERENCE_NUM_THREADS": str(threads), "PERFORMANCE_HINT": "LATENCY"})
    r = c.create_infer_request(); run = lambda: r.infer({0: x})
for _ in range(3):
    run()
print(json.dumps(int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024))
"""


def peak_rss_mb(engine: str, path: Path, threads: int) -> float:
    """Peak RSS of a fresh process that loads the file and runs it three times."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, engine, str(path), str(threads)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    return float(out.stdout.strip().splitlines()[-1])


def size_mb(path: Path) -> float:
    companion = path.with_suffix(".bin")
    return (path.stat().st_size + (companion.stat().st_size if companion.exists() else 0)) / 1e6


def mean_tokens(size: str, r: int) -> float:
    from bench.speed import SIZES
    from medvit_edge.train.merging import expected_tokens

    return expected_tokens(SPEED_PATCHES, SIZES[size]["num_hidden_layers"], r)


# -- accuracy on a trained model ------------------------------------------------------------------


def accuracy(run: Path, rs: list[int], split: str, calibration_count: int) -> dict[str, Any]:
    """Every runtime's file at every r, built from the trained model in ``run``, on its labelled
    ``split`` images: against the unmerged fp32 file and the labels."""
    from medvit_edge.io.checkpoint import load_spec
    from medvit_edge.io.labelled import read_labelled_set
    from medvit_edge.runtime.images import load_image
    from medvit_edge.runtime.preprocess import preprocess_batch
    from medvit_edge.train.merging import expected_tokens

    spec, config = load_spec(run), json.loads((run / "config.json").read_text())
    images = read_labelled_set(run / "split.csv", split)
    names = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    truth = np.array([names.index(image.label) for image in images])
    pixels = preprocess_batch([load_image(image.path) for image in images], spec)
    train = read_labelled_set(run / "split.csv", "train")[:calibration_count]
    calibration = preprocess_batch([load_image(image.path) for image in train], spec)
    folder = run / "merging-bench"
    outputs: dict[str, np.ndarray] = {}
    for r in rs:
        for name, path in build_files(run, folder, r, calibration, spec.size).items():
            outputs[f"{name}|r{r}"] = _predict(_lever(name), path, pixels)
    fp32_r0 = folder / "r0" / "fp32.onnx"
    if fp32_r0.is_file():
        outputs[BASELINE] = _predict(_lever(BASELINE), build_peer(fp32_r0, folder, calibration), pixels)
    patches, layers = (config["image_size"] // config["patch_size"]) ** 2, config["num_hidden_layers"]
    return {
        "run": str(run),
        "split": split,
        "images": len(images),
        "image_size": spec.size,
        "patches": patches,
        "layers": layers,
        "mean_tokens": {str(r): expected_tokens(patches, layers, r) for r in rs},
        "files": _guarded(outputs, truth, names),
    }


def _guarded(outputs: dict[str, np.ndarray], truth: np.ndarray, names: list[str]) -> dict[str, Any]:
    """Each file's agreement, accuracy and malignant recall, and whether it passes the guard."""
    reference = outputs["onnxruntime fp32|r0"].argmax(axis=1)
    scored = {key: _score(logits.argmax(axis=1), reference, truth, names) for key, logits in outputs.items()}
    base = scored["onnxruntime fp32|r0"]
    for numbers in scored.values():
        numbers["passes_guard"] = (
            numbers["agreement"] >= GUARD["agreement"]
            and base["accuracy"] - numbers["accuracy"] <= GUARD["accuracy_drop"] + 1e-9
            and base["malignant_recall"] - numbers["malignant_recall"] <= GUARD["recall_drop"] + 1e-9
        )
    return scored


def _predict(lever: Lever, path: Path, pixels: np.ndarray) -> np.ndarray:
    run = runner(lever, path, threads=2)
    return np.concatenate([np.asarray(run(pixels[i : i + 1])[0]) for i in range(len(pixels))])


def _score(
    predicted: np.ndarray, reference: np.ndarray, truth: np.ndarray, names: list[str]
) -> dict[str, Any]:
    malignant = names.index("malignant") if "malignant" in names else 0
    positives = truth == malignant
    return {
        "agreement": float((predicted == reference).mean()),
        "accuracy": float((predicted == truth).mean()),
        "malignant_recall": float((predicted[positives] == malignant).mean())
        if positives.any()
        else float("nan"),
    }


# -- the run ----------------------------------------------------------------------------------------


def measure_speed(args: argparse.Namespace) -> dict[str, Any]:
    calibration = calibration_images(args.calibration_images)
    files = {size: speed(size, args.r, calibration) for size in args.models}
    runners = {
        f"{size}|{key}": runner(_lever(key), path, args.threads)
        for size, found in files.items()
        for key, path in found.items()
    }
    ms = interleaved(runners, args.rounds)  # every model size and runtime in the same rounds
    results: dict[str, Any] = {"machine": machine(), "threads": args.threads, "rounds": args.rounds}
    results["models"] = {}
    for size, found in files.items():
        rows = {}
        for key, path in found.items():
            engine = _lever(key).engine
            rows[key] = {
                "ms": ms[f"{size}|{key}"],
                "size_mb": size_mb(path),
                "peak_rss_mb": peak_rss_mb(engine, path, args.threads),
            }
        peer = rows[BASELINE]["ms"]
        for row in rows.values():
            row["x_nncf_documented"] = row["ms"] / peer
        tokens = {str(r): mean_tokens(size, r) for r in args.r}
        results["models"][size] = {"rows": rows, "mean_tokens": tokens}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", default=["base", "large"], choices=["base", "large"])
    parser.add_argument("--r", nargs="+", type=int, default=[0, 4, 8, 12, 16])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calibration-images", type=int, default=64)
    parser.add_argument("--run", type=Path, action="append", default=[], help="A trained run: accuracy side.")
    parser.add_argument("--split", default="test", help="The --run split scored. [default: test]")
    parser.add_argument("--no-write", action="store_true", help="Scratch JSON + printed section only.")
    args = parser.parse_args()
    args.r = sorted(set(args.r) | {0})  # r 0 is the reference every row is judged against
    prefix = "merging-scratch" if args.no_write else "merging"
    # each part is kept in its own JSON, so the speed run and each model's accuracy can be
    # measured at different times (never beside another heavy job) and rendered together
    if args.models:
        print(f"wrote {save_json(f'{prefix}-speed', measure_speed(args))}")
    for run in args.run:
        measured = accuracy(run, args.r, args.split, args.calibration_images)
        print(f"wrote {save_json(f'{prefix}-accuracy-{run.name}', measured)}")
    results = _load_parts(prefix)
    body = render(results)
    if results["models"]:  # the plot is latency: nothing to draw before a speed run
        print(f"wrote {plot(results, RESULTS / f'{prefix}.png')}")
    if args.no_write:
        print(body)
    else:
        # named, not embedded: the docs site includes BENCHMARKS.md, where the path would not resolve
        figure = f"\n\nPlot: `bench/results/{prefix}.png`.\n" if results["models"] else ""
        update_section(TITLE, body + figure)


def _load_parts(prefix: str) -> dict[str, Any]:
    speed_file = RESULTS / f"{prefix}-speed.json"
    results = json.loads(speed_file.read_text()) if speed_file.is_file() else {"models": {}}
    results["accuracy"] = [
        json.loads(path.read_text()) for path in sorted(RESULTS.glob(f"{prefix}-accuracy-*.json"))
    ]
    return results


if __name__ == "__main__":
    main()
