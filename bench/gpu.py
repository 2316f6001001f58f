"""The GPU benchmark, in one run of under 8 minutes on an H100/H200, with no downloads.

1. ViT-L/16 training samples/s: the cookbook settings (fp32, eager attention, batch 10) versus
   bf16 + SDPA, and bf16 + SDPA + torch.compile (``bench.train_busi.gpu_benchmark``).
2. ViT-L/16 inference, batch 1 latency and batch 32 throughput: PyTorch fp32, bf16 + SDPA, and
   onnxruntime-gpu (CUDA fp32 and fp16; TensorRT fp16 when that provider is there). The lent
   machines carry onnxruntime's CPU build only; without onnxruntime-gpu the ONNX rows say so.
3. When the machine has several GPUs: DDP training through torchrun (``bench.ddp_train``), 1
   process and then one per GPU, the same script: samples/s and the scaling efficiency
   (N-GPU samples/s / (N × 1-GPU samples/s)).

    python -m bench.gpu            # writes bench/results/gpu.json and BENCHMARKS.md sections
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import machine, save_json, update_section
from bench.train_busi import gpu_benchmark

VIT_L = dict(
    hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, num_labels=3
)


def _cuda_time(run: Any, repeats: int = 20) -> float:
    import torch

    for _ in range(3):
        run()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        run()
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats * 1000


def pytorch_inference() -> dict[str, Any]:
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    results = {}
    for name, attn, dtype in (
        ("PyTorch fp32 eager", "eager", torch.float32),
        ("PyTorch bf16 SDPA", "sdpa", torch.bfloat16),
    ):
        model = (
            ViTForImageClassification(ViTConfig(**VIT_L, attn_implementation=attn)).cuda().to(dtype).eval()
        )
        for batch in (1, 32):
            x = torch.randn(batch, 3, 224, 224, device="cuda", dtype=dtype)
            with torch.inference_mode():
                ms = _cuda_time(lambda m=model, x=x: m(pixel_values=x))
            results[f"{name}|{batch}"] = {"ms_per_batch": ms, "images_per_s": batch * 1000 / ms}
        del model
        torch.cuda.empty_cache()
    return results


def onnxruntime_inference(folder: Path) -> dict[str, Any]:
    import numpy as np
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    try:
        import onnxruntime as ort
    except ImportError:
        return {"skipped": "onnxruntime is not installed"}
    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        return {"skipped": f"onnxruntime-gpu is not installed here (providers: {providers})"}
    model = ViTForImageClassification(ViTConfig(**VIT_L, attn_implementation="eager")).eval()
    fp32 = folder / "vit_l.onnx"
    torch.onnx.export(
        model,
        (torch.randn(1, 3, 224, 224),),
        str(fp32),
        input_names=["pixel_values"],
        output_names=["logits"],
        dynamic_axes={"pixel_values": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    fp16 = folder / "vit_l.fp16.onnx"
    onnx.save(convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True), str(fp16))
    runs = [
        ("ORT CUDA fp32", fp32, ["CUDAExecutionProvider"]),
        ("ORT CUDA fp16", fp16, ["CUDAExecutionProvider"]),
    ]
    if "TensorrtExecutionProvider" in providers:
        trt = ("TensorrtExecutionProvider", {"trt_fp16_enable": True})
        runs.append(("ORT TensorRT fp16", fp32, [trt, "CUDAExecutionProvider"]))
    results = {}
    for name, path, chosen in runs:
        session = ort.InferenceSession(str(path), providers=chosen)
        for batch in (1, 32):
            x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
            ms = _cuda_time(lambda s=session, x=x: s.run(None, {"pixel_values": x}))
            results[f"{name}|{batch}"] = {"ms_per_batch": ms, "images_per_s": batch * 1000 / ms}
    return results


def ddp_scaling(gpus: int, steps: int = 30) -> dict[str, Any]:
    """ViT-L bf16 + SDPA, 32 per GPU: torchrun with 1 process, then with ``gpus``."""
    runs = {}
    with tempfile.TemporaryDirectory() as scratch:
        for processes in (1, gpus):
            result = Path(scratch) / f"ddp{processes}.json"
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
            command += ["--nproc_per_node", str(processes), "-m", "bench.ddp_train", str(result)]
            subprocess.run([*command, "--steps", str(steps)], check=True, cwd=Path(__file__).parents[1])
            runs[processes] = json.loads(result.read_text())
    one, many = runs[1]["samples_per_second"], runs[gpus]["samples_per_second"]
    return {"gpus": gpus, "runs": runs, "efficiency": many / (gpus * one)}


def write_ddp_section(data: dict[str, Any], machine_line: str) -> None:
    runs, gpus = data["runs"], data["gpus"]
    rows = "\n".join(
        f"| {n} | {runs[n]['per_device_batch'] * n} | {runs[n]['samples_per_second']:.1f} | "
        f"{runs[n]['samples_per_second'] / (n * runs[1]['samples_per_second']):.0%} |"
        for n in (1, gpus)
    )
    update_section(
        "Training: ViT-L/16 on several GPUs (DDP)",
        f"Machine: {machine_line}. Command: `python -m bench.gpu` (`torchrun --standalone "
        f"--nproc_per_node N -m bench.ddp_train`, bf16 + SDPA, 32 per GPU, {runs[1]['steps']} steps "
        "after a warm-up run).\n\n| GPUs | global batch | train samples/s | scaling efficiency |\n"
        f"|---|---|---|---|\n{rows}",
    )


def main() -> None:
    started = time.perf_counter()
    training = gpu_benchmark(steps=30)
    inference = pytorch_inference()
    with tempfile.TemporaryDirectory() as scratch:
        inference.update(onnxruntime_inference(Path(scratch)))
    import torch

    gpus = torch.cuda.device_count()
    ddp = ddp_scaling(gpus) if gpus > 1 else {"skipped": f"{gpus} GPU on this machine"}
    data = {
        "machine": machine(),
        "training": training,
        "inference": inference,
        "ddp": ddp,
        "wall_s": time.perf_counter() - started,
    }
    save_json("gpu", data)
    rows = "\n".join(f"| {k} | {v['samples_per_second']:.1f} |" for k, v in training["results"].items())
    update_section(
        "Training: ViT-L/16 on a GPU",
        f"Machine: {data['machine']}. Command: `python -m bench.gpu`.\n\n"
        f"| settings | train samples/s |\n|---|---|\n{rows}\n\nThe cookbook run reported 18.7 samples/s.",
    )
    lines = ["| runner | batch | ms/batch | images/s |", "|---|---|---|---|"]
    for key, value in inference.items():
        if key == "skipped":
            lines.append(f"\nonnxruntime rows skipped: {value}.")
            continue
        name, batch = key.split("|")
        lines.append(f"| {name} | {batch} | {value['ms_per_batch']:.2f} | {value['images_per_s']:.0f} |")
    update_section(
        "Inference: ViT-L/16 on a GPU",
        f"Machine: {data['machine']}. Command: `python -m bench.gpu` "
        f"(whole run {data['wall_s']:.0f} s).\n\n" + "\n".join(lines),
    )
    if "runs" in ddp:
        write_ddp_section(ddp, data["machine"])
    print(f"done in {data['wall_s']:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
