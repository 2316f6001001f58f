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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import BUSI

# Today's recipe as the CPU benchmark has always run it: from-scratch with a lower learning rate
# and a longer warm-up than the recipe's own. The newer recipes carry their settings themselves.
BENCH_OVERRIDES: dict[str, dict[str, Any]] = {
    "from-scratch": {"learning_rate": 5e-4, "warmup_ratio": 0.1},
}


@dataclass(frozen=True)
class SeedPlan:
    """What every seed of the benchmark shares."""

    epochs: float
    root: Path
    model: str = "small"
    workers: int = 0  # dataloader processes: 0 on a shared CPU (one thread per training process)


def seed_config(recipe: str, seed: int, plan: SeedPlan) -> Any:
    from medvit_edge.train import TrainConfig

    folder = plan.root if plan.model == "small" else plan.root / plan.model
    return TrainConfig.from_recipe(
        recipe,  # type: ignore[arg-type]
        model=plan.model,
        data=str(BUSI / "split.csv"),
        output=folder / recipe / f"seed-{seed}",
        epochs=plan.epochs,
        seed=seed,
        dataloader_workers=plan.workers,
        logging_steps=20,
        progress=False,
        **BENCH_OVERRIDES.get(recipe, {}),
    )


def run_seed(recipe: str, seed: int, plan: SeedPlan) -> dict[str, Any]:
    """Train one seed unless its run folder is complete; its record for the JSON."""
    cfg = seed_config(recipe, seed, plan)
    check_same_settings(cfg)
    metrics_path = cfg.output / "metrics.json"
    if not metrics_path.is_file():
        from medvit_edge.train import train

        started = time.perf_counter()
        train(cfg)
        print(f"{recipe} seed {seed}: {time.perf_counter() - started:.0f} s", flush=True)
    metrics = json.loads(metrics_path.read_text())
    return {
        "seed": seed,
        "run_dir": shown_path(cfg.output),
        "test": metrics["test"],
        "validation": metrics["validation"],
        "epochs": metrics["epochs"],
        "train_samples_per_second": metrics["train_samples_per_second"],
        "train_runtime_s": metrics["train_runtime_s"],
        "parameters": metrics["parameters"],
        "validation_curve": validation_curve(cfg.output),
        "config": cfg.to_dict(),
    }


def validation_curve(run_dir: Path) -> list[float]:
    """Validation balanced accuracy after every epoch, from the last checkpoint's trainer state:
    its tail is a selector with no best-of-N bias."""
    states = sorted(
        (run_dir / "checkpoints").glob("checkpoint-*/trainer_state.json"),
        key=lambda p: int(p.parent.name.split("-")[-1]),
    )
    if not states:
        return []
    history = json.loads(states[-1].read_text())["log_history"]
    return [e["eval_balanced_accuracy"] for e in history if "eval_balanced_accuracy" in e]


def shown_path(path: Path) -> str:
    """Relative to the repository when inside it, so the JSON reads the same on every checkout."""
    from bench.common import REPO

    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def run_seeds(
    recipe: str, seeds: list[int], plan: SeedPlan, available_only: bool = False
) -> list[dict[str, Any]]:
    """Every seed's record, training the missing ones; ``available_only`` reads the finished ones
    and trains nothing (what an interrupted loop, or training elsewhere, has so far)."""
    if available_only:
        seeds = [s for s in seeds if (seed_config(recipe, s, plan).output / "metrics.json").is_file()]
    return [run_seed(recipe, seed, plan) for seed in seeds]


METRICS = ("accuracy", "balanced_accuracy", "macro_f1")


def check_same_settings(cfg: Any) -> None:
    """A resumed loop must not mix runs of other settings into one recipe's spread."""
    saved_path = cfg.output / "train_config.json"
    if not saved_path.is_file():
        return
    saved, wanted = json.loads(saved_path.read_text()), cfg.to_dict()
    # the same data reached through another checkout (or a link) is the same data
    saved["data"], wanted["data"] = (str(Path(d).resolve()) for d in (saved["data"], wanted["data"]))
    ignored = {"output", "progress", "dataloader_workers", "logging_steps"}
    differ = [
        f"{key} {saved[key]!r} != {wanted[key]!r}"
        for key in sorted(set(saved) & set(wanted) - ignored)
        if saved[key] != json.loads(json.dumps(wanted[key]))  # tuples as lists; 25 == 25.0
    ]
    if differ:
        raise SystemExit(
            f"{cfg.output}: trained with other settings ({'; '.join(differ)}); remove it or use another --root"
        )


def stats(values: list[float]) -> dict[str, float]:
    """Mean, sample sd (0 for one value), min and max."""
    n = len(values)
    mean = sum(values) / n
    sd = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else 0.0
    return {"mean": mean, "sd": sd, "min": min(values), "max": max(values), "n": n}


def summarise(records: list[dict[str, Any]], labels: list[str]) -> dict[str, Any]:
    """The spread over seeds of the test numbers, and validation balanced accuracy (the selector)."""
    test = {key: stats([r["test"][key] for r in records]) for key in METRICS}
    test["recall"] = {c: stats([r["test"]["per_class"][c]["recall"] for r in records]) for c in labels}
    validation: dict[str, Any] = {key: stats([r["validation"][key] for r in records]) for key in METRICS}
    tails = [sum(r["validation_curve"][-5:]) / 5 for r in records if len(r.get("validation_curve", [])) >= 5]
    if tails:
        validation["balanced_accuracy_last_5_epochs"] = stats(tails)
    return {"test": test, "validation": validation}


def median_seed(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The seed in the middle by VALIDATION balanced accuracy (the lower middle of an even count,
    ties by seed): the benchmark model, chosen without looking at test."""
    ranked = sorted(records, key=lambda r: (r["validation"]["balanced_accuracy"], r["seed"]))
    chosen = ranked[(len(ranked) - 1) // 2]
    return {
        "seed": chosen["seed"],
        "run_dir": chosen["run_dir"],
        "validation_balanced_accuracy": chosen["validation"]["balanced_accuracy"],
        "test_balanced_accuracy": chosen["test"]["balanced_accuracy"],
    }


def majority_baseline(test: dict[str, Any]) -> dict[str, Any]:
    """Always predicting the most frequent test class: what a classifier must beat."""
    support = {c: v["support"] for c, v in test["per_class"].items()}
    n, top = sum(support.values()), max(support, key=support.__getitem__)
    precision = support[top] / n
    return {
        "class": top,
        "accuracy": precision,
        "balanced_accuracy": 1 / len(support),
        "macro_f1": 2 * precision / (precision + 1) / len(support),
        "recall": {c: float(c == top) for c in support},
    }


def recipe_record(recipe: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    labels = list(records[0]["test"]["per_class"])
    config = {k: v for k, v in records[0]["config"].items() if k not in ("seed", "output", "progress")}
    return {
        "recipe": recipe,
        "config": config,
        "seeds": [{k: v for k, v in r.items() if k != "config"} for r in records],
        "summary": summarise(records, labels),
        "median_seed": median_seed(records),
    }


def build_result(
    per_recipe: dict[str, list[dict[str, Any]]], plan: SeedPlan, seeds: list[int], note: str = ""
) -> dict[str, Any]:
    """The JSON: the winner (highest mean VALIDATION balanced accuracy over its seeds) at the top
    level, every recipe under ``recipes``."""
    from bench.common import machine

    recipes = {name: recipe_record(name, records) for name, records in per_recipe.items() if records}
    if not recipes:
        raise SystemExit("no finished seed to report: train some first (without --available-only)")
    common = sorted(set.intersection(*({r["seed"] for r in records} for records in per_recipe.values())))
    scores = {
        # paired: over the seeds every recipe has (the same validation images), when there are any
        name: stats(
            [r["validation"]["balanced_accuracy"] for r in records if r["seed"] in common or not common]
        )["mean"]
        for name, records in per_recipe.items()
        if records
    }
    winner = max(scores, key=scores.__getitem__)
    first = recipes[winner]["seeds"][0]
    return {
        **recipes[winner],
        "selection": {
            "rule": "highest mean validation balanced accuracy over the seeds every recipe has; "
            "test never looked at",
            "validation_balanced_accuracy_mean": scores,
            "compared_on_seeds": common,
            "winner": winner,
        },
        "benchmark_model": recipes[winner]["median_seed"],
        "majority_baseline": majority_baseline(first["test"]),
        "budget": {
            "epochs": plan.epochs,
            "model": plan.model,
            "dataloader_workers": plan.workers,
            "note": note,
            "seeds_planned": seeds,
            "seeds_done": {name: [s["seed"] for s in r["seeds"]] for name, r in recipes.items()},
            "threads_per_run": _threads(),
            "train_samples_per_second": {
                name: stats([s["train_samples_per_second"] for s in r["seeds"]])
                for name, r in recipes.items()
            },
        },
        "machine": machine(),
        "recipes": recipes,
    }


SECTION = "Training: seeds of the from-scratch recipes on BUSI"


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def spread_cell(s: dict[str, float]) -> str:
    """mean ± sd (min–max), as the seed tables print a spread."""
    return f"{s['mean']:.3f} ± {s['sd']:.3f} ({s['min']:.2f}–{s['max']:.2f})"


def _mean_sd(s: dict[str, float] | None) -> str:
    return "–" if s is None else f"{s['mean']:.3f} ± {s['sd']:.3f}"


def _rows(data: dict[str, Any]) -> list[str]:
    rows = []
    for name, record in data["recipes"].items():
        test, validation = record["summary"]["test"], record["summary"]["validation"]
        recalls = " / ".join(f"{s['mean']:.2f} ± {s['sd']:.2f}" for s in test["recall"].values())
        rows.append(
            f"| `{name}`{' (selected)' if name == data['recipe'] else ''} | {len(record['seeds'])} "
            f"| {validation['balanced_accuracy']['mean']:.3f} ± {validation['balanced_accuracy']['sd']:.3f} "
            f"| {_mean_sd(validation.get('balanced_accuracy_last_5_epochs'))} "
            f"| {spread_cell(test['accuracy'])} | {spread_cell(test['balanced_accuracy'])} | {spread_cell(test['macro_f1'])} | {recalls} |"
        )
    base = data["majority_baseline"]
    rows.append(
        f"| majority class (always {base['class']}) | – | 0.333 | 0.333 | {base['accuracy']:.3f} | {base['balanced_accuracy']:.3f} "
        f"| {base['macro_f1']:.3f} | {' / '.join(f'{v:.2f}' for v in base['recall'].values())} |"
    )
    return rows


def goal_line(data: dict[str, Any]) -> str:
    """The benchmark goal: mean test balanced accuracy >= 0.75 over the seeds, every class's mean
    recall >= 0.6 (also: over 5 seeds; fewer is said)."""
    test = data["summary"]["test"]
    balanced = test["balanced_accuracy"]["mean"]
    recalls = {c: s["mean"] for c, s in test["recall"].items()}
    reached = balanced >= 0.75 and min(recalls.values()) >= 0.6 and len(data["seeds"]) >= 5
    low = ", ".join(f"{c} {v:.2f}" for c, v in recalls.items() if v < 0.6) or "none"
    return (
        f"Goal (mean test balanced accuracy ≥ 0.75 over 5 seeds, every class recall ≥ 0.6): "
        f"{'reached' if reached else 'NOT reached'}: {balanced:.3f} over {len(data['seeds'])} seeds; "
        f"classes below 0.6 recall: {low}."
    )


def _header(data: dict[str, Any]) -> str:
    from medvit_edge.train.models import PRESETS

    budget = data["budget"]
    geometry = PRESETS[budget["model"]]
    tokens = (geometry["image_size"] // geometry["patch_size"]) ** 2
    speed = "; ".join(f"`{n}` {s['mean']:.1f}" for n, s in budget["train_samples_per_second"].items())
    recipes = " ".join(f"--recipe {r}" for r in data["recipes"])
    done = "; ".join(f"`{n}`: {', '.join(map(str, s))}" for n, s in budget["seeds_done"].items())
    options = f"--model {budget['model']} " if budget["model"] != "small" else ""
    return f"""
Machine: {data["machine"]}; torch threads per run: {budget["threads_per_run"]}. {budget["note"]}
Command: `python -m bench.train_busi seeds {recipes} {options}--seeds {len(budget["seeds_planned"])} --epochs {budget["epochs"]:g}`
(resumable: a seed whose run folder holds metrics.json is read, not retrained; `--render-only`
rewrites this section from `bench/results/train_busi_seeds.json`). Seeds finished: {done}.
Preset `{budget["model"]}` ({geometry["image_size"]} px, {tokens} patch tokens, width {geometry["hidden_size"]},
{geometry["num_hidden_layers"]} blocks, {data["seeds"][0]["parameters"] / 1e6:.1f} M parameters, random init),
{budget["epochs"]:g} epochs per seed, best checkpoint by validation balanced accuracy. The seed
sets the augmentation and batch order and the validation images carved from BUSI's training
split, and (in runs trained from 2026-12-03 on) the initial weights: earlier runs drew them from
wherever the process's random generator stood, so every seed that was the first one trained in
its process started from the same weights. The test split (156 images) is the same for every seed.
Training samples/s per run (mean): {speed}.
"""


def render_section(data: dict[str, Any]) -> None:
    from bench.common import update_section

    model = data["budget"]["model"]
    update_section(SECTION if model == "small" else f"{SECTION}, {model}", section_text(data))


def section_text(data: dict[str, Any]) -> str:
    model = data["benchmark_model"]
    return f"""{_header(data)}
Test split, mean ± sd over seeds (min–max); the recipes are compared on validation balanced
accuracy ({data["selection"]["rule"]}). The validation number is the best checkpoint's, picked on
those same validation images, so it is biased upward, the more so the noisier a recipe's
validation curve: with few seeds it can prefer a recipe that is no better on test. The mean of
the last 5 epochs' validation balanced accuracy has no such bias; it is shown, not used to select.

| recipe | seeds | val. balanced acc. (best checkpoint) | val. balanced acc. (mean of last 5 epochs) | test accuracy | test balanced acc. | test macro-F1 | recall {" / ".join(data["summary"]["test"]["recall"])} |
|---|---|---|---|---|---|---|---|
{chr(10).join(_rows(data))}

Selection (mean validation balanced accuracy over seeds {", ".join(map(str, data["selection"]["compared_on_seeds"])) or "all"}):
{", ".join(f"`{n}` {v:.3f}" for n, v in data["selection"]["validation_balanced_accuracy_mean"].items())}; selected: `{data["recipe"]}`.

{goal_line(data)}

Benchmark model (the median seed of `{data["recipe"]}` by validation balanced accuracy, never by
test): seed {model["seed"]}, `{model["run_dir"]}` (validation balanced accuracy
{model["validation_balanced_accuracy"]:.3f}, test {model["test_balanced_accuracy"]:.3f}).
"""


def training_cost(presets: tuple[str, ...] = ("small", "small-224"), repeats: int = 2) -> dict[str, Any]:
    """CPU seconds per training image (forward, backward, AdamW step; batch 32, one thread) of
    each preset. Process time, not wall time: on a shared machine it is the cost, not the share of
    the CPU a run happened to get. The fastest of 3 steps after a warm-up, best of ``repeats``."""
    import torch

    from bench.common import machine
    from medvit_edge.train.models import load_model

    torch.set_num_threads(1)
    cost: dict[str, float] = {}
    for preset in presets * repeats:
        model, spec = load_model(preset, ["benign", "malignant", "normal"])
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        pixels, labels = torch.randn(32, 3, spec.size, spec.size), torch.randint(0, 3, (32,))
        times = []
        for _ in range(4):
            started = time.process_time()
            model(pixel_values=pixels, labels=labels).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            times.append(time.process_time() - started)
        cost[preset] = min(cost.get(preset, float("inf")), min(times[1:]) / 32)
    return {"machine": machine(), "threads": 1, "batch": 32, "cpu_s_per_image": cost}


def cost_text(cost: dict[str, Any], seeds: dict[str, Any] | None) -> str:
    """The 224 px model's training time on this CPU, from the measured cost per image."""
    per_image = cost["cpu_s_per_image"]
    images = 467  # BUSI training images after carving validation (seed 0)
    lines = [
        f"| `{p}` | {c * 1000:.1f} | {1 / c:.1f} | {images * c / 60:.2f} | {150 * images * c / 3600:.1f} |"
        for p, c in per_image.items()
    ]
    shared = ""
    if seeds:
        rate = seeds["budget"]["train_samples_per_second"]
        measured = min(s["mean"] for s in rate.values())
        hours = 5 * 150 * images / measured / 3600 * per_image["small-224"] / per_image["small"]
        shared = (
            f" At the rate the seed runs above actually got on the shared machine ({measured:.1f} "
            f"`small` images/s), 5 seeds × 150 epochs of `small-224` would take about {hours:.0f} hours: "
            "the 224 px benchmark model does not fit this CPU budget and is left for a GPU."
        )
    return f"""
Machine: {cost["machine"]}. Command: `python -m bench.train_busi cost`. CPU time per training
image (forward, backward, AdamW; batch 32, one thread), measured as process time, which other jobs change far less than
wall time, though not by nothing (caches, clocks: on this machine under load average ~10 it
measured 23.0 / 66.8 ms, idle 16.0 / 55.7 ms); training epochs exclude the per-epoch validation
pass.

| preset | CPU ms / image | images/s on one free core | min / epoch ({images} images) | hours / 150 epochs |
|---|---|---|---|---|
{chr(10).join(lines)}

`small-224` costs {per_image["small-224"] / per_image["small"]:.1f}x `small` per image.{shared}
"""
