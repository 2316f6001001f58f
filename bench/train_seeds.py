"""Several seeds of a from-scratch recipe on BUSI, and the spread of their test numbers.

One run folder per (recipe, seed) under ``--root``: ``<root>/<recipe>/seed-<s>``. A seed whose
folder already holds ``metrics.json`` is read, not retrained, so an interrupted loop resumes
where it stopped (a half-trained seed restarts from scratch: its schedule depends on the epochs).

The seed changes the weight init, the augmentation draws, the batch order and the validation
images carved from the training split (``prepare._carve_missing_splits`` uses it); the test split
is BUSI's fixed ``split.csv`` test split for every seed. Seed s of every recipe sees the same
validation images, so recipes are compared image for image.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from bench.common import BUSI

# Today's recipe as the CPU benchmark has always run it: from-scratch with a lower learning rate
# and a longer warm-up than the recipe's own. The newer recipes carry their settings themselves.
BENCH_OVERRIDES: dict[str, dict[str, Any]] = {
    "from-scratch": {"learning_rate": 5e-4, "warmup_ratio": 0.1},
}


def seed_config(recipe: str, seed: int, epochs: float, root: Path, model: str = "small") -> Any:
    from medvit_edge.train import TrainConfig

    return TrainConfig.from_recipe(
        recipe,  # type: ignore[arg-type]
        model=model,
        data=str(BUSI / "split.csv"),
        output=root / recipe / f"seed-{seed}",
        epochs=epochs,
        seed=seed,
        dataloader_workers=0,  # one thread per training process on a shared CPU
        logging_steps=20,
        progress=False,
        **BENCH_OVERRIDES.get(recipe, {}),
    )


def run_seed(recipe: str, seed: int, epochs: float, root: Path, model: str = "small") -> dict[str, Any]:
    """Train one seed unless its run folder is complete; its record for the JSON."""
    cfg = seed_config(recipe, seed, epochs, root, model)
    metrics_path = cfg.output / "metrics.json"
    if not metrics_path.is_file():
        from medvit_edge.train import train

        started = time.perf_counter()
        train(cfg)
        print(f"{recipe} seed {seed}: {time.perf_counter() - started:.0f} s", flush=True)
    metrics = json.loads(metrics_path.read_text())
    return {
        "seed": seed,
        "run_dir": str(cfg.output),
        "test": metrics["test"],
        "validation": metrics["validation"],
        "epochs": metrics["epochs"],
        "train_samples_per_second": metrics["train_samples_per_second"],
        "train_runtime_s": metrics["train_runtime_s"],
        "parameters": metrics["parameters"],
        "config": cfg.to_dict(),
    }


def run_seeds(
    recipe: str, seeds: list[int], epochs: float, root: Path, model: str = "small"
) -> list[dict[str, Any]]:
    return [run_seed(recipe, seed, epochs, root, model) for seed in seeds]
