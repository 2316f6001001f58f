"""Shared fixtures: real BUSI images from ../shared (skipped cleanly when absent), phantom data,
and a tiny ViT trained and exported once per session."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BUSI = REPO.parent / "shared" / "data" / "busi"

HAS_TORCH = (
    importlib.util.find_spec("torch") is not None and importlib.util.find_spec("transformers") is not None
)
HAS_EXPORT = (
    HAS_TORCH
    and importlib.util.find_spec("optimum") is not None
    and importlib.util.find_spec("onnx") is not None
)

needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="needs the [train] extra (torch, transformers)")
needs_export = pytest.mark.skipif(not HAS_EXPORT, reason="needs the [export] extra (optimum, onnx)")


@pytest.fixture(scope="session")
def busi_dir() -> Path:
    if not (BUSI / "split.csv").is_file():
        pytest.skip(f"real BUSI images not found at {BUSI}")
    return BUSI


@pytest.fixture(scope="session")
def busi_images(busi_dir: Path) -> list[Path]:
    return sorted(p for p in busi_dir.rglob("*.png"))


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medvit_edge.phantom import generate_phantom_dataset

    root = tmp_path_factory.mktemp("phantom")
    generate_phantom_dataset(root, train_per_class=30, test_per_class=8, seed=3)
    return root


@pytest.fixture(scope="session")
def tiny_busi_run(busi_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ViT trained for a few steps on the real BUSI train split (CPU, seconds)."""
    if not HAS_TORCH:
        pytest.skip("needs the [train] extra")
    from medvit_edge.train import TrainConfig, train

    run_dir = tmp_path_factory.mktemp("busi_run") / "run"
    cfg = TrainConfig(
        model="tiny",
        data=str(busi_dir / "split.csv"),
        output=run_dir,
        epochs=2,
        max_steps=24,
        learning_rate=1e-3,
        train_batch_size=16,
        eval_batch_size=64,
        dataloader_workers=0,
        logging_steps=2,
        progress=False,
        seed=1,
    )
    train(cfg)
    return run_dir


@pytest.fixture(scope="session")
def tiny_busi_export(tiny_busi_run: Path) -> Path:
    """fp32 + fp16 + int8 (dynamic) of the tiny BUSI run, validated on 64 validation images."""
    if not HAS_EXPORT:
        pytest.skip("needs the [export] extra")
    from medvit_edge.export import ExportConfig, export

    export(
        ExportConfig(
            run_dir=tiny_busi_run, fp16=True, int8="dynamic", allow_degraded=True, max_validation_images=64
        )
    )
    return tiny_busi_run / "onnx"


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
