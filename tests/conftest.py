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
    from medvit_edge.io.phantom import generate_phantom_dataset

    root = tmp_path_factory.mktemp("phantom")
    generate_phantom_dataset(root, train_per_class=30, test_per_class=8, seed=3)
    return root


def _train_tiny(data: Path, run_dir: Path, max_steps: int) -> Path:
    """The tiny ViT preset, trained from scratch for a few steps (CPU, seconds)."""
    if not HAS_TORCH:
        pytest.skip("needs the [train] extra")
    from medvit_edge.train import TrainConfig, train

    cfg = TrainConfig.from_recipe(
        "from-scratch",
        model="tiny",
        data=str(data),
        output=run_dir,
        epochs=10,  # max_steps ends it: enough to make decisive predictions (not near-ties)
        max_steps=max_steps,
        train_batch_size=16,
        logging_steps=2,
        progress=False,
        seed=1,
    )
    train(cfg)
    return run_dir


def _export_all(run_dir: Path, **options: object) -> Path:
    """fp32 + fp16 + int8 (dynamic), kept even when a variant misses its tolerances."""
    if not HAS_EXPORT:
        pytest.skip("needs the [export] extra")
    from medvit_edge.export import ExportConfig, export

    export(ExportConfig(run_dir=run_dir, fp16=True, int8=True, allow_degraded=True, **options))
    return run_dir / "onnx"


@pytest.fixture(scope="session")
def tiny_busi_run(busi_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Trained on the real BUSI train split."""
    return _train_tiny(busi_dir / "split.csv", tmp_path_factory.mktemp("busi_run") / "run", max_steps=24)


@pytest.fixture(scope="session")
def tiny_busi_export(tiny_busi_run: Path) -> Path:
    """Every variant of the tiny BUSI run, validated on 64 validation images."""
    return _export_all(tiny_busi_run, max_validation_images=64)


@pytest.fixture(scope="session")
def tiny_run(phantom_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Trained on phantom images: needs no shared data."""
    return _train_tiny(
        phantom_dir / "split.csv", tmp_path_factory.mktemp("phantom_run") / "run", max_steps=60
    )


@pytest.fixture(scope="session")
def tiny_export(tiny_run: Path) -> Path:
    """Every variant of the phantom run: the model for runtime, infer and evaluate tests."""
    return _export_all(tiny_run)


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


# Tests that need a trained model (directly or through another fixture) are the slow ones: the
# edit-test loop runs the rest with ``pytest -m "not slow"`` (``make test-fast``).
TRAINED = {"tiny_run", "tiny_export", "tiny_busi_run", "tiny_busi_export"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if TRAINED & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
