"""Training benchmarks.

CPU (this machine): the "small" ViT preset from scratch on the BUSI train split, reporting test
accuracy and per-class recall on the 156-image test split and training samples/s.

    python -m bench.train_busi cpu [--epochs 60]

GPU (run where a GPU is lent; no downloads: ViT-L/16 built from its config, random init, on
synthetic 224x224 batches): samples/s of the cookbook settings (fp32, eager attention, batch 10)
versus bf16 + SDPA, and bf16 + SDPA + torch.compile, through the same Trainer code path.

    python -m bench.train_busi gpu [--steps 60]

Seeds (the spread of the test numbers over N seeds of each recipe, the recipe chosen on
validation balanced accuracy, and the benchmark model = its median seed by validation):

    python -m bench.train_busi seeds [--recipe from-scratch --recipe scratch-balanced]
        [--seeds 5] [--epochs 25] [--model small] [--workers 0] [--root models/seeds]
        [--note TEXT] [--available-only] [--render-only]

Training cost per image of small vs small-224 (process time, one thread; valid on a shared CPU):

    python -m bench.train_busi cost
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import BUSI, machine, save_json, update_section


def cpu_benchmark(epochs: float, output: Path) -> dict[str, Any]:
    from medvit_edge.train import TrainConfig, train

    # the from-scratch recipe, with the learning rate and warm-up the recorded run used for `small`
    cfg = TrainConfig.from_recipe(
        "from-scratch",
        model="small",
        data=str(BUSI / "split.csv"),
        output=output,
        epochs=epochs,
        learning_rate=5e-4,
        warmup_ratio=0.1,
        dataloader_workers=2,
        seed=0,
        logging_steps=20,
    )
    started = time.perf_counter()
    result = train(cfg)
    wall = time.perf_counter() - started
    test = result.metrics["test"]
    return {
        "machine": machine(),
        "config": cfg.to_dict(),
        "wall_s": wall,
        "test": test,
        "train_samples_per_second": result.metrics["train_samples_per_second"],
        "parameters": result.metrics["parameters"],
        "run_dir": str(output),
    }


def write_cpu_section(data: dict[str, Any]) -> None:
    from medvit_edge.train.models import PRESETS

    test = data["test"]
    recalls = " / ".join(f"{test['per_class'][k]['recall']:.2f}" for k in ("benign", "malignant", "normal"))
    cfg = data["config"]
    update_section(
        "Training: small ViT from scratch on BUSI (CPU)",
        f"""
Machine: {data["machine"]}. Command: `python -m bench.train_busi cpu --epochs {cfg["epochs"]:g}`.
Preset `small` (ViT, {PRESETS["small"]["image_size"]} px, patch 16, width 192, 6 blocks, {data["parameters"] / 1e6:.1f} M parameters,
random init), BUSI `split.csv` train split with validation carved from it (duplicate-aware), lr
{cfg["learning_rate"]}, batch {cfg["train_batch_size"]}, {cfg["epochs"]:g} epochs, warm-up {cfg["warmup_ratio"]}, crops
{tuple(cfg["crop_scale"])}, class-weighted loss {cfg["class_weighted_loss"]}, best checkpoint by validation balanced accuracy.

| test images | accuracy | balanced accuracy | recall benign / malignant / normal | train samples/s | wall time |
|---|---|---|---|---|---|
| {test["n"]} | {test["accuracy"]:.3f} | {test["balanced_accuracy"]:.3f} | {recalls} | {data["train_samples_per_second"]:.1f} | {data["wall_s"] / 60:.1f} min |

The majority-class rate on this test split is 87/156 = 0.558. A ViT-L fine-tuned from ImageNet
weights (the cookbook) is the real product; this from-scratch run exists to show the training
code learns real ultrasound on a CPU within the time limit.
""",
    )


def gpu_benchmark(steps: int) -> dict[str, Any]:
    import torch
    from transformers import Trainer, TrainingArguments, ViTConfig, ViTForImageClassification

    class Synthetic(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 10_000

        def __getitem__(self, i: int) -> dict[str, Any]:
            return {"pixel_values": torch.randn(3, 224, 224), "labels": i % 3}

    settings = {
        "cookbook: fp32, eager attention, batch 10": dict(attn="eager", bf16=False, compile=False, batch=10),
        "bf16 + SDPA, batch 10": dict(attn="sdpa", bf16=True, compile=False, batch=10),
        "bf16 + SDPA + torch.compile, batch 10": dict(attn="sdpa", bf16=True, compile=True, batch=10),
        "bf16 + SDPA, batch 32": dict(attn="sdpa", bf16=True, compile=False, batch=32),
    }
    results = {}
    for name, s in settings.items():
        config = ViTConfig(
            hidden_size=1024,
            num_hidden_layers=24,
            num_attention_heads=16,
            intermediate_size=4096,
            num_labels=3,
            attn_implementation=s["attn"],
        )
        model = ViTForImageClassification(config)
        args = TrainingArguments(
            output_dir="/tmp/bench-gpu",
            per_device_train_batch_size=s["batch"],
            max_steps=steps,
            learning_rate=2e-5,
            weight_decay=0.01,
            bf16=s["bf16"],
            torch_compile=s["compile"],
            report_to=[],
            save_strategy="no",
            logging_steps=steps,
            dataloader_num_workers=8,
            disable_tqdm=True,
        )
        trainer = Trainer(model=model, args=args, train_dataset=Synthetic())
        trainer.train()  # warm-up run: kernels, compile, allocator
        trainer.args.max_steps = steps
        output = trainer.train()
        results[name] = {"samples_per_second": output.metrics["train_samples_per_second"], **s}
        print(name, results[name], file=sys.stderr)
        del trainer, model
        torch.cuda.empty_cache()
    return {"machine": machine(), "steps": steps, "results": results}


def seeds_benchmark(args: argparse.Namespace) -> None:
    from bench.common import RESULTS
    from bench.train_seeds import SeedPlan, build_result, render_section, run_seeds

    # one file (and section) per preset: a small-224 run must not overwrite the 128 px numbers
    name = "train_busi_seeds" if args.model == "small" else f"train_busi_seeds-{args.model}"
    path = RESULTS / f"{name}.json"
    if args.render_only:
        render_section(json.loads(path.read_text()))
        return
    recipes = args.recipe or ["from-scratch", "scratch-balanced"]
    seeds = list(range(args.seeds))
    plan = SeedPlan(args.epochs or 25, args.root.resolve(), args.model, args.workers)
    per_recipe = {r: run_seeds(r, seeds, plan, args.available_only) for r in recipes}
    data = build_result(per_recipe, plan, seeds, args.note)
    save_json(name, data)
    render_section(data)


def cost_benchmark() -> None:
    """small vs small-224: what a 224 px model costs to train on this CPU."""
    from bench.common import RESULTS
    from bench.train_seeds import cost_text, training_cost

    data = training_cost()
    save_json("train_cost_cpu", data)
    seeds = RESULTS / "train_busi_seeds.json"
    update_section(
        "Training cost per image: small vs small-224 (CPU)",
        cost_text(data, json.loads(seeds.read_text()) if seeds.is_file() else None),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=["cpu", "gpu", "seeds", "cost"])
    parser.add_argument("--epochs", type=float, help="cpu: default 150; seeds: default 25")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--output", type=Path, default=Path("models/bench-small-busi"))
    parser.add_argument("--recipe", action="append", help="seeds: a train recipe (repeatable)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds: how many (0..N-1)")
    parser.add_argument("--root", type=Path, default=Path("models/seeds"), help="seeds: run folders")
    parser.add_argument("--model", default="small", help="seeds: preset (small, small-224)")
    parser.add_argument("--workers", type=int, default=0, help="seeds: dataloader processes per run")
    parser.add_argument("--note", default="", help="seeds: how the machine was shared, for the section")
    parser.add_argument(
        "--available-only", action="store_true", help="seeds: train nothing, report finished seeds"
    )
    parser.add_argument("--render-only", action="store_true", help="seeds: rewrite the section from the JSON")
    args = parser.parse_args()
    if args.mode == "seeds":
        seeds_benchmark(args)
    elif args.mode == "cost":
        cost_benchmark()
    elif args.mode == "cpu":
        data = cpu_benchmark(args.epochs or 150, args.output)
        save_json("train_busi_cpu", data)
        write_cpu_section(data)
    else:
        data = gpu_benchmark(args.steps)
        save_json("train_vitl_gpu", data)
        rows = "\n".join(f"| {k} | {v['samples_per_second']:.1f} |" for k, v in data["results"].items())
        update_section(
            "Training: ViT-L/16 on a GPU",
            f"Machine: {data['machine']}. "
            f"Command: `python -m bench.train_busi gpu --steps {data['steps']}`.\n\n"
            f"| settings | train samples/s |\n|---|---|\n{rows}\n\nThe cookbook run reported 18.7 samples/s.",
        )


if __name__ == "__main__":
    main()
