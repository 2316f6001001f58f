"""The seed benchmark's bookkeeping: spreads, the median seed chosen on validation only, the
majority baseline, and a resumed loop refusing run folders of other settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.train_seeds import (
    SeedPlan,
    build_result,
    check_same_settings,
    majority_baseline,
    median_seed,
    section_text,
    seed_config,
    stats,
)

from .conftest import needs_torch

SUPPORT = {"benign": 87, "malignant": 42, "normal": 27}  # BUSI's test split


def _record(seed: int, validation: float, test: float) -> dict[str, Any]:
    def split(balanced: float) -> dict[str, Any]:
        per_class = {c: {"recall": balanced, "support": n} for c, n in SUPPORT.items()}
        return {
            "accuracy": balanced,
            "balanced_accuracy": balanced,
            "macro_f1": balanced,
            "per_class": per_class,
        }

    return {
        "seed": seed,
        "run_dir": f"models/seeds/r/seed-{seed}",
        "validation": split(validation),
        "test": split(test),
        "validation_curve": [0.3] * 10 + [validation - 0.1] * 5,
        "train_samples_per_second": 20.0,
        "parameters": 2_800_000,
        "config": {"seed": seed, "epochs": 25},
    }


def test_stats_are_mean_sample_sd_and_range() -> None:
    result = stats([0.5, 0.7, 0.6])
    assert result["mean"] == pytest.approx(0.6)
    assert result["sd"] == pytest.approx(0.1)  # n - 1 in the denominator
    assert (result["min"], result["max"], result["n"]) == (0.5, 0.7, 3)
    assert stats([0.4])["sd"] == 0.0


def test_median_seed_is_chosen_on_validation_never_test() -> None:
    # by test the median would be seed 1 (0.2 < 0.5 < 0.9); by validation it is seed 2
    records = [_record(0, 0.70, 0.9), _record(1, 0.50, 0.5), _record(2, 0.60, 0.2)]
    assert median_seed(records)["seed"] == 2
    # an even count takes the lower middle
    assert median_seed([*records, _record(3, 0.80, 0.1)])["seed"] == 2


def test_majority_baseline_on_busi_test_counts() -> None:
    base = majority_baseline(_record(0, 0.5, 0.5)["test"])
    assert base["class"] == "benign"
    assert base["accuracy"] == pytest.approx(87 / 156)
    assert base["balanced_accuracy"] == pytest.approx(1 / 3)
    precision = 87 / 156  # F1 of benign (recall 1), the other two classes' F1 is 0
    assert base["macro_f1"] == pytest.approx(2 * precision / (precision + 1) / 3)
    assert base["recall"] == {"benign": 1.0, "malignant": 0.0, "normal": 0.0}


@needs_torch
def test_recipe_selected_on_mean_validation_balanced_accuracy() -> None:
    per_recipe = {
        "a": [_record(0, 0.60, 0.9), _record(1, 0.62, 0.9)],  # better on test, worse on validation
        "b": [_record(0, 0.70, 0.5), _record(1, 0.66, 0.5)],
    }
    data = build_result(per_recipe, SeedPlan(25, Path("models/seeds")), seeds=[0, 1])
    assert data["recipe"] == "b" and data["selection"]["winner"] == "b"
    assert data["benchmark_model"]["seed"] == 1
    assert [s["seed"] for s in data["seeds"]] == [0, 1]
    assert set(data["seeds"][0]) >= {"seed", "test", "validation"}
    assert data["summary"]["test"]["balanced_accuracy"]["mean"] == pytest.approx(0.5)
    # paired: a third seed only recipe "a" has does not enter the comparison
    lucky = build_result(
        {**per_recipe, "a": [*per_recipe["a"], _record(2, 0.99, 0.9)]}, SeedPlan(25, Path(".")), [0, 1, 2]
    )
    assert lucky["recipe"] == "b" and lucky["selection"]["compared_on_seeds"] == [0, 1]
    text = section_text(data)
    assert "NOT reached: 0.500 over 2 seeds" in text
    assert "| `b` (selected) | 2 | 0.680 ± 0.028 | 0.580 ± 0.028 | 0.500 ± 0.000 (0.50–0.50)" in text
    assert (
        "| majority class (always benign) | – | 0.333 | 0.333 | 0.558 | 0.333 | 0.239 | 1.00 / 0.00 / 0.00 |"
        in text
    )
    assert "seed 1, `models/seeds/r/seed-1`" in text


@needs_torch
def test_resumed_loop_refuses_a_run_folder_of_other_settings(tmp_path: Path) -> None:
    cfg = seed_config("from-scratch", 0, SeedPlan(25, tmp_path))
    cfg.output.mkdir(parents=True)
    (cfg.output / "train_config.json").write_text(json.dumps({**cfg.to_dict(), "epochs": 40.0}))
    with pytest.raises(SystemExit, match=r"epochs 40\.0 != 25"):
        check_same_settings(cfg)
    (tmp_path / "link").symlink_to(Path(cfg.data).parent)
    same = {**cfg.to_dict(), "epochs": 25.0, "data": str(tmp_path / "link" / "split.csv")}
    (cfg.output / "train_config.json").write_text(json.dumps(same))
    check_same_settings(cfg)  # the same settings (25 as 25.0, the data through a link): resumable
