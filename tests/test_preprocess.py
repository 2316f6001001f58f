"""numpy preprocessing must equal torchvision's eval transform, and the spec must be data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from medvit_edge.runtime.images import array_to_rgb, load_image, to_rgb
from medvit_edge.runtime.preprocess import PreprocessError, PreprocessSpec, preprocess, resized_size

from .conftest import needs_torch


def torchvision_eval(spec: PreprocessSpec):
    from medvit_edge.train.models import torchvision_transforms

    return torchvision_transforms(spec, train=False)


def _random_image(rng: np.random.Generator, mode: str, width: int, height: int) -> Image.Image:
    if mode in ("I;16", "I"):
        return Image.fromarray(rng.integers(0, 65535, (height, width), dtype=np.uint16))
    if mode == "F":
        return Image.fromarray(rng.random((height, width), dtype=np.float32))
    base = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8), "RGB")
    if mode == "P":
        return base.convert("P", palette=Image.Palette.ADAPTIVE)
    return base.convert(mode)


MODES = ["RGB", "L", "1", "P", "RGBA", "LA", "CMYK", "YCbCr", "I;16", "I", "F", "HSV", "LAB"]
SIZES = [
    (224, 224),
    (256, 256),
    (500, 600),
    (600, 500),
    (1, 1),
    (3, 700),
    (700, 3),
    (225, 224),
    (97, 131),
    (1024, 37),
    (224, 10),
    (300, 224),
]
# Resized to 224 x 52266 and the like: seconds each in torchvision. The mode only decides how the
# image becomes RGB before the resize, so these run in two modes, not all of them.
EXTREME = {(3, 700), (700, 3), (1024, 37)}


def _mode_size_pairs() -> list[tuple[str, int, int]]:
    """Every mode at every ordinary size; the extreme aspect ratios in RGB and 16-bit grey."""
    return [
        (mode, width, height)
        for width, height in SIZES
        for mode in (("RGB", "I;16") if (width, height) in EXTREME else MODES)
    ]


@needs_torch
@pytest.mark.parametrize(
    "spec",
    [
        PreprocessSpec(),
        PreprocessSpec(
            size=64,
            resize_size=64,
            interpolation="bicubic",
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
        ),
        PreprocessSpec(size=224, resize_size=256),
        PreprocessSpec(resize_mode="squash"),
    ],
)
def test_numpy_equals_torchvision_on_generated_images(spec: PreprocessSpec, rng: np.random.Generator) -> None:
    transform = torchvision_eval(spec)
    for mode, width, height in _mode_size_pairs():
        rgb = to_rgb(_random_image(rng, mode, width, height))
        expected = transform(rgb).numpy()
        actual = preprocess(rgb, spec)
        assert actual.shape == (3, spec.size, spec.size) and actual.dtype == np.float32
        assert np.abs(actual - expected).max() <= 1e-6, (mode, width, height)


@needs_torch
@pytest.mark.busi
def test_numpy_equals_torchvision_on_all_busi_images(busi_images: list) -> None:
    assert len(busi_images) == 780
    spec = PreprocessSpec()
    transform = torchvision_eval(spec)
    worst = 0.0
    for path in busi_images:
        image = load_image(path)
        worst = max(worst, float(np.abs(preprocess(image, spec) - transform(image).numpy()).max()))
    assert worst <= 1e-6


def test_resized_size_matches_torchvision_rule() -> None:
    spec = PreprocessSpec(size=224, resize_size=224)
    assert resized_size(500, 600, spec) == (224, 268)  # int(224 * 600 / 500) = 268
    assert resized_size(600, 500, spec) == (268, 224)
    assert resized_size(3, 700, spec) == (224, 52266)
    assert resized_size(640, 480, PreprocessSpec(resize_mode="squash")) == (224, 224)


def test_spec_round_trips_through_json() -> None:
    spec = PreprocessSpec(
        size=96, resize_size=110, interpolation="bicubic", mean=(0.1, 0.2, 0.3), std=(1, 2, 3)
    )
    text = spec.to_json()
    assert json.loads(text)["interpolation"] == "bicubic"
    assert PreprocessSpec.from_json(text) == spec


@pytest.mark.parametrize(
    "bad",
    [
        '{"size": 0}',
        '{"interpolation": "cubic-ish"}',
        '{"colour": 1}',
        "[1, 2]",
        "{size: 3}",
        '{"std": [0, 1, 1]}',
    ],
)
def test_bad_spec_is_a_clear_error(bad: str) -> None:
    with pytest.raises(PreprocessError):
        PreprocessSpec.from_json(bad)


def test_spec_from_hf_processor_config() -> None:
    config = {
        "size": {"height": 384, "width": 384},
        "resample": 3,
        "image_mean": [0.5] * 3,
        "image_std": [0.5] * 3,
    }
    spec = PreprocessSpec.from_hf_processor_config(config)
    assert (spec.size, spec.resize_size, spec.interpolation) == (384, 384, "bicubic")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    height=st.one_of(st.integers(1, 64), st.sampled_from([224, 1000, 4096])),
    width=st.one_of(st.integers(1, 64), st.sampled_from([224, 999, 4096])),
    channels=st.sampled_from([None, 1, 3, 4]),
    dtype=st.sampled_from(["uint8", "uint16", "float32", "float64", "bool"]),
    seed=st.integers(0, 2**16),
)
def test_any_array_becomes_a_finite_model_input(
    height: int, width: int, channels: int | None, dtype: str, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    shape = (height, width) if channels is None else (height, width, channels)
    if dtype == "bool":
        array = rng.random(shape) > 0.5
    elif dtype.startswith("float"):
        array = (rng.random(shape) * rng.choice([1.0, 255.0, 1e6])).astype(dtype)
    else:
        array = rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype)
    spec = PreprocessSpec(size=32, resize_size=32)
    tensor = preprocess(array_to_rgb(array), spec)
    assert tensor.shape == (3, 32, 32) and tensor.dtype == np.float32 and np.isfinite(tensor).all()
