"""BENCHMARKS.md tables for bench.speed results (kept apart so the numbers can be re-rendered)."""

from __future__ import annotations

import json
import sys
from typing import Any

from bench.common import RESULTS, update_section

NAMES = {"base": "ViT-B/16", "large": "ViT-L/16"}


def _model_table(size: str, data: dict[str, Any], batch: int) -> list[str]:
    timing = data["ms_per_image"]
    runners = sorted({key.split("|")[0] for key in timing}, key=lambda n: list(timing).index(f"{n}|1|model"))
    eager = timing["PyTorch eager fp32|1|model"]
    rates = data.get("images_per_s_all_cores", {})
    lines = [
        f"**{NAMES[size]}**",
        "",
        f"| runner | ms/image, batch 1 (model) | × eager | batch 1 (end to end) | batch {batch} (model) | "
        f"batch {batch} (end to end) | images/s, all cores | size MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for runner in runners:
        sizes = data["sizes_mb"]
        # older results keyed our files by the bare variant name
        known = sizes.get(runner, sizes.get(runner.removeprefix("medvit-edge ")))
        size_mb = f"{known:.0f}" if known is not None else ""
        rate = (
            f"{rates[runner]:.1f}" if runner in rates else f"{1000 / timing[f'{runner}|{batch}|model']:.1f}*"
        )
        row = [
            timing[f"{runner}|1|model"],
            timing[f"{runner}|1|end-to-end"],
            timing[f"{runner}|{batch}|model"],
            timing[f"{runner}|{batch}|end-to-end"],
        ]
        lines.append(
            f"| {runner} | {row[0]:.0f} | {row[0] / eager:.2f} | {row[1]:.0f} | {row[2]:.0f} | {row[3]:.0f} "
            f"| {rate if rates else ''} | {size_mb} |"
        )
    precisions = data.get("openvino_inference_precision", {})
    if precisions:
        chosen = "; ".join(f"{name}: {value}" for name, value in precisions.items())
        lines += [
            "",
            f"OpenVINO's inference precision (`INFERENCE_PRECISION_HINT` after compiling): {chosen}.",
        ]
    fresh = data["fresh_process"]
    lines += [
        "",
        "| variant | import s | session load s | first prediction s | process start → first prediction s "
        "| peak RSS MB |",
        "|---|---|---|---|---|---|",
    ]
    for variant, f in fresh.items():
        lines.append(
            f"| {variant} | {f['import_s']:.2f} | {f['load_s']:.2f} | {f['first_prediction_s']:.2f} | "
            f"{f['process_to_first_prediction_s']:.2f} | {f['peak_rss_mb']:.0f} |"
        )
    iv = data["infer_vs_model"]
    lines += [
        "",
        f"Folder `infer` (int8, {iv['images']} BUSI images, batch {batch}): {iv['infer_ips']:.2f} images/s "
        f"vs model only {iv['model_only_ips']:.2f} images/s = **{iv['ratio']:.0%}**.",
        "",
    ]
    return lines


def render(results: dict[str, Any]) -> str:
    """The section's Markdown (BENCHMARKS.md's "Inference speed (CPU)")."""
    pre = results["preprocessing_ms_500x600"]
    lines = [
        f"Machine: {results['machine']}. Command: `python -m bench.speed`. Random-init weights, "
        f"{results['threads']} threads, every runner once per round, {results['rounds']} rounds interleaved, "
        "medians in ms per image; thread spinning is off in every onnxruntime session, so no session's "
        "busy-waiting workers slow the next runner. *Model* = a preprocessed tensor in, logits out; *end to end* = PIL images "
        "in, probabilities out (the HF pipelines include ViTImageProcessor). Noise on this machine is "
        "±10–15% between runs; ratios within one run are steadier.",
        "",
        "OpenVINO peers (bench/peers.py): compiled with `INFERENCE_NUM_THREADS` = threads and "
        "`PERFORMANCE_HINT` LATENCY; the post-training int8 one is NNCF's documented basic flow "
        "(`nncf.quantize`, transformer model type, 64 BUSI training images, defaults otherwise). "
        "*images/s, all cores* (bench/throughput.py): OpenVINO with the THROUGHPUT hint and an "
        "`AsyncInferQueue`; medvit-edge variants as one single-thread `Classifier` per core, each "
        "on its own thread (median of `--throughput-rounds` rounds); * = the batch model-only figure "
        "as images/s (PyTorch, Optimum).",
        "",
        "Preprocessing one 500×600 image: " + ", ".join(f"{k} {v:.2f} ms" for k, v in pre.items()) + ". "
        f"`import medvit_edge.runtime.classifier`: {results['import_medvit_edge_runtime_s']:.3f} s.",
        "",
    ]
    for size, data in results["models"].items():
        lines += _model_table(size, data, results["batch"])
    return "\n".join(lines)


def write_section(results: dict[str, Any]) -> None:
    update_section("Inference speed (CPU)", render(results))


if __name__ == "__main__":
    write_section(json.loads((RESULTS / (sys.argv[1] if len(sys.argv) > 1 else "speed.json")).read_text()))
