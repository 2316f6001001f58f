"""Where the model looked: the explainability variant, attention rollout, overlays, infer --overlays.

The model here is the tiny phantom ViT trained longer than ``tiny_run`` (at 60 steps its test
accuracy is 0.62 and where its attention goes is not settled), then exported with
``explain=True``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from medvit_edge import cli
from medvit_edge.errors import UserError
from medvit_edge.inference.command import InferConfig, infer
from medvit_edge.inference.explain import (
    Explainer,
    attention_rollout,
    colour_map,
    heat_on_frame,
    render_overlay,
    seen_box,
)
from medvit_edge.inference.overlays import overlay_caption, overlay_names, safe_stem
from medvit_edge.inference.rows import PredictionRow
from medvit_edge.runtime.classifier import Classifier
from medvit_edge.runtime.preprocess import PreprocessSpec, preprocess_batch

from .conftest import HAS_EXPORT, needs_export

# Enough steps for the tiny ViT to learn the lesions (test accuracy 0.88 vs 0.62 at 60 steps). Probed
# with the test below at 240 steps, training seeds 1, 2 and 3: left/right, every pair followed the
# lesion (correlations 0.58 to 0.87); top/bottom, seeds 1 and 2 every pair (0.50 to 0.87), seed 3
# on average only (0.14 to 0.35, two pairs moved up by less than 0.0012). 120 steps (accuracy
# 0.67) moved away from the lesion on 10 of 12 pairs.
ATTENDING_STEPS = 240


@pytest.fixture(scope="module")
def explain_dir(phantom_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """model.onnx + model.explain.onnx of a tiny phantom ViT, validated on its validation split."""
    if not HAS_EXPORT:
        pytest.skip("needs the [export] extra")
    from medvit_edge.export import ExportConfig, export
    from medvit_edge.train import TrainConfig, train

    run_dir = tmp_path_factory.mktemp("explain_run") / "run"
    cfg = TrainConfig.from_recipe(
        "from-scratch",
        model="tiny",
        data=str(phantom_dir / "split.csv"),
        output=run_dir,
        epochs=40,  # max_steps ends it
        max_steps=ATTENDING_STEPS,
        train_batch_size=16,
        logging_steps=20,
        progress=False,
        seed=1,
    )
    train(cfg)
    export(ExportConfig(run_dir=run_dir, explain=True, golden_images=0))
    return run_dir / "onnx"


def _test_images(phantom_dir: Path, count: int = 6) -> list[Path]:
    return sorted((phantom_dir / "test").rglob("*.png"))[:count]


# -- the variant ----------------------------------------------------------------------------------


@needs_export
def test_explain_variant_keeps_fp32_logits_and_adds_attentions(explain_dir: Path, phantom_dir: Path) -> None:
    from medvit_edge.runtime.manifest import Manifest

    record = {r.variant: r for r in Manifest.read(explain_dir).variants}["explain"]  # type: ignore[union-attr]
    assert record.file == "model.explain.onnx" and record.status == "passed"
    assert record.validation.max_abs_logit_diff <= 1e-4
    fp32 = Classifier.load(explain_dir / "model.onnx", device="cpu")
    explain = Classifier.load(explain_dir / "model.explain.onnx", device="cpu")
    pixels = preprocess_batch([Image.open(p).convert("RGB") for p in _test_images(phantom_dir)], fp32.spec)
    assert np.abs(explain.run(pixels) - fp32.run(pixels)).max() <= 1e-4
    outputs = explain.session.get_outputs()
    assert outputs[0].name == "logits" and [o.name for o in outputs[1:]] == [
        f"attentions.{i}" for i in range(4)
    ]
    attentions = Explainer(explain).attentions(pixels)
    assert [a.shape for a in attentions] == [(len(pixels), 4, 65, 65)] * 4  # 4 heads, 1 + 8 x 8 tokens
    assert np.allclose(attentions[0].sum(axis=-1), 1.0, atol=1e-5)  # softmax rows
    with pytest.raises(UserError, match="export with --explain"):
        Explainer(fp32)


# -- rollout --------------------------------------------------------------------------------------


def _one_layer(tokens: int, rows: dict[int, int]) -> np.ndarray:
    """Attention (1, 2 heads, T, T) where token i attends only to rows[i] (itself otherwise)."""
    layer = np.eye(tokens)
    for source, target in rows.items():
        layer[source] = np.eye(tokens)[target]
    return np.repeat(layer[None, None], 2, axis=1)


def test_rollout_follows_attention_through_layers_in_order() -> None:
    tokens = 1 + 2 * 2
    one = attention_rollout([_one_layer(tokens, {0: 3})])
    assert one.shape == (1, 2, 2) and np.allclose(one.ravel(), [0, 0, 1, 0])  # CLS -> patch 2
    # layer 1: patch 2 (token 3) reads patch 0 (token 1); layer 2: CLS reads token 3. The class
    # token's information came half from token 3's own value, half from what it read.
    chained = attention_rollout([_one_layer(tokens, {3: 1}), _one_layer(tokens, {0: 3})])
    assert np.allclose(chained.ravel(), [0.5, 0, 0.5, 0])
    reversed_order = attention_rollout([_one_layer(tokens, {0: 3}), _one_layer(tokens, {3: 1})])
    assert np.allclose(reversed_order.ravel(), [0, 0, 1, 0])  # layer order matters
    uniform = attention_rollout([np.full((3, 4, tokens, tokens), 1 / tokens)] * 3)
    assert uniform.shape == (3, 2, 2) and np.allclose(uniform, 0.25)
    with pytest.raises(ValueError, match="square grid"):
        attention_rollout([np.full((1, 1, 7, 7), 1 / 7)])


@needs_export
def test_heat_maps_are_normalised_patch_grids(explain_dir: Path, phantom_dir: Path) -> None:
    explainer = Explainer.load(explain_dir / "model.explain.onnx", device="cpu")
    grids = explainer.heat_maps(_test_images(phantom_dir))
    assert grids.shape == (6, 8, 8)  # 64 px / 8 px patches
    assert (grids >= 0).all() and np.allclose(grids.sum(axis=(1, 2)), 1.0)
    assert not np.allclose(grids, 1 / 64)  # not flat


def _plant(background: np.ndarray, centre: tuple[int, int], radius: int) -> tuple[np.ndarray, np.ndarray]:
    """A dark round lesion with its posterior acoustic shadow (what the phantoms' lesions have)
    on the background: (RGB image, the mask of lesion and shadow)."""
    yy, xx = np.mgrid[0 : background.shape[0], 0 : background.shape[1]]
    x, y = centre
    inside = np.hypot(xx - x, yy - y) < radius
    shadow = (yy > y + radius) & (yy < y + 3 * radius) & (np.abs(xx - x) < 0.9 * radius)
    grey = background * np.where(inside, 0.15, np.where(shadow, 0.35, 1.0))
    return np.repeat(grey.clip(0, 255).astype(np.uint8)[..., None], 3, axis=2), inside | shadow


@needs_export
@pytest.mark.parametrize("axis", ["left-right", "top-bottom"])
def test_heat_map_moves_with_a_planted_lesion(explain_dir: Path, axis: str) -> None:
    from medvit_edge.io.phantom import make_phantom

    explainer = Explainer.load(explain_dir / "model.explain.onnx", device="cpu")
    first, second = ((36, 56), (92, 56)) if axis == "left-right" else ((64, 28), (64, 68))
    moves, correlations = [], []
    for seed in range(6):  # the same tissue background, the lesion planted in two places
        background = make_phantom("normal", 128, 128, np.random.default_rng(100 + seed)).astype(np.float64)
        (image_a, mask_a), (image_b, mask_b) = _plant(background, first, 14), _plant(background, second, 14)
        grids = explainer.heat_maps([image_a, image_b])  # 128 px square: the model sees all of it
        position = (np.arange(8) + 0.5) / 8
        along = 0 if axis == "left-right" else 1  # sum over rows -> x profile; columns -> y
        centroids = [(grid.sum(axis=along) * position).sum() for grid in grids]
        moves.append(centroids[1] - centroids[0])
        lesion_shift = (mask_b.astype(float) - mask_a).reshape(8, 16, 8, 16).mean(axis=(1, 3))
        correlations.append(np.corrcoef((grids[1] - grids[0]).ravel(), lesion_shift.ravel())[0, 1])
    # the heat map's centre of mass moves the way the lesion moved, and what changed in the map is
    # where the lesion appeared and disappeared (an untrained ViT's map moved away from it:
    # correlations -0.04 to -0.74). Across the image: on every background, and strongly on average;
    # along the depth (where the tissue itself darkens and the shadow falls) on average (see
    # ATTENDING_STEPS).
    if axis == "left-right":
        assert min(moves) > 0 and min(correlations) > 0, (moves, correlations)
        assert np.mean(correlations) > 0.4, (moves, correlations)
    else:
        assert np.mean(moves) > 0 and np.mean(correlations) > 0.1, (moves, correlations)


# -- geometry and drawing -------------------------------------------------------------------------


def test_seen_box_is_the_centre_crop_in_frame_coordinates() -> None:
    spec = PreprocessSpec(size=64, resize_size=64)
    assert seen_box(200, 100, spec) == (50.0, 0.0, 150.0, 100.0)  # 128 x 64 resized, crop x 32..96
    assert seen_box(100, 300, spec) == (0.0, 100.0, 100.0, 200.0)
    wider = PreprocessSpec(size=64, resize_size=80)  # crop inside the shorter side too
    left, top, right, bottom = seen_box(80, 80, wider)
    assert (left, top, right, bottom) == (8.0, 8.0, 72.0, 72.0)
    assert seen_box(200, 100, PreprocessSpec(size=64, resize_mode="squash")) == (0.0, 0.0, 200.0, 100.0)
    grid = np.zeros((2, 2))
    grid[0, 1] = 1.0  # top-right patch
    heat = heat_on_frame(grid, (50.0, 0.0, 150.0, 100.0), 200, 100)
    assert np.isnan(heat[:, :50]).all() and np.isnan(heat[:, 150:]).all()
    assert heat[10, 140] > 0.9 and heat[90, 60] < 0.1  # top-right hot, bottom-left cold


def test_colour_map_and_overlay_picture() -> None:
    colours = colour_map(np.array([0.0, 0.5, 1.0, np.nan]))
    assert colours.dtype == np.uint8 and colours.shape == (4, 3)
    assert colours[0].sum() < 10 and colours[2].sum() > 600 and (colours[3] == colours[0]).all()
    frame = np.full((100, 200, 3), 90, np.uint8)
    grid = np.zeros((8, 8))
    grid[2, 6] = 1.0
    picture = render_overlay(frame, grid, PreprocessSpec(size=64, resize_size=64), ["benign p=0.90", "x.png"])
    pixels = np.asarray(picture)
    assert picture.width == 384 and picture.height > 192  # small frames are drawn larger, caption below
    scale = 384 / 200
    hot = pixels[round(31.25 * scale), round(131.25 * scale)]  # centre of patch (2, 6), crop x 50..150
    cold = pixels[round(80 * scale), round(60 * scale)]
    assert hot.astype(int).sum() > cold.astype(int).sum() + 60
    assert (pixels[round(50 * scale), round(20 * scale)] == 90).all()  # outside the crop: the frame


def test_overlay_names_are_safe_unique_and_keep_the_folder(tmp_path: Path) -> None:
    from medvit_edge.io.inputs import InputFile

    root = tmp_path / "scans"
    items = [
        InputFile(root / "benign" / "case (1).png", root),
        InputFile(root / "malignant" / "case 1.png", root),
        InputFile(tmp_path / "..hidden;rm -rf.png"),
        InputFile(tmp_path / "CASE 1.png"),
        InputFile(tmp_path / "sub" / "case 1.png"),  # no root: the name alone, which repeats
        InputFile(tmp_path / "cine.dcm"),
    ]
    rows = [PredictionRow(str(item.path), 0) for item in items]
    rows.append(PredictionRow(str(tmp_path / "cine.dcm"), 1))
    rows.append(PredictionRow(str(tmp_path / "bad.png"), None, error="unreadable"))
    names = overlay_names(items, rows)
    assert names[(str(root / "benign" / "case (1).png"), 0)] == "benign__case_1.overlay.png"
    assert names[(str(root / "malignant" / "case 1.png"), 0)] == "malignant__case_1.overlay.png"
    assert names[(str(tmp_path / "..hidden;rm -rf.png"), 0)] == "hidden_rm_-rf.overlay.png"
    assert names[(str(tmp_path / "cine.dcm"), 1)] == "cine-frame-1.overlay.png"
    assert names[(str(tmp_path / "sub" / "case 1.png"), 0)] == "case_1-2.overlay.png"
    assert len(set(map(str.lower, names.values()))) == len(names) == 7
    assert safe_stem(Path("/x/.png"), None) == "png" and safe_stem(Path("/x/\u00e9.png"), None) == "image"


def test_caption_shows_label_probability_and_decision() -> None:
    row = PredictionRow(
        "/s/a.png", 0, "malignant", probabilities={"benign": 0.38, "malignant": 0.62}, variant="int8-dynamic"
    )
    assert overlay_caption(row, ["benign", "malignant"], False)[0] == "malignant p=0.62 | decision: malignant"
    row.decision = "refer"
    lines = overlay_caption(row, ["benign", "malignant"], False)
    assert (
        lines[0] == "malignant p=0.62 | decision: refer"
        and lines[1] == "a.png"
        and "int8-dynamic" in lines[2]
    )


# -- infer --overlays -----------------------------------------------------------------------------


@needs_export
def test_infer_writes_one_overlay_per_image_and_none_for_a_corrupt_one(
    explain_dir: Path, phantom_dir: Path, tmp_path: Path
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for path in _test_images(phantom_dir, 3):
        shutil.copy(path, inputs / path.name)
    (inputs / "broken.png").write_bytes(b"not a png")
    before = {p.name: p.read_bytes() for p in inputs.iterdir()}
    out = tmp_path / "overlays"
    cfg = InferConfig(model=explain_dir / "model.onnx", inputs=[str(inputs)], overlays=out, progress=False)
    summary = infer(cfg)
    assert summary.exit_code == 1 and summary.failed_files == 1 and summary.overlay_failures == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(p.stem + ".overlay.png" for p in _test_images(phantom_dir, 3))
    for row in summary.rows:
        if row.error:
            continue
        picture = Image.open(out / (Path(row.path).stem + ".overlay.png"))
        frame = Image.open(row.path)
        assert picture.format == "PNG" and picture.width >= frame.width and picture.height > frame.height
    assert {p.name: p.read_bytes() for p in inputs.iterdir()} == before  # inputs untouched
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left


@needs_export
def test_an_overlay_that_cannot_be_made_costs_that_file_only(
    explain_dir: Path, phantom_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import medvit_edge.inference.overlays as overlays

    images = _test_images(phantom_dir, 3)
    real_read = overlays.read_bytes

    def read_bytes(path: str) -> bytes:
        if path == str(images[1]):  # e.g. removed between the model run and the overlay
            raise OSError(2, "No such file or directory")
        return real_read(path)

    monkeypatch.setattr(overlays, "read_bytes", read_bytes)
    out = tmp_path / "overlays"
    cfg = InferConfig(
        model=explain_dir / "model.onnx", inputs=[str(p) for p in images], overlays=out, progress=False
    )
    summary = infer(cfg)
    assert summary.failed_files == 0 and summary.overlay_failures == 1 and summary.exit_code == 1
    assert summary.errors == [f"{images[1]}: overlay not written (No such file or directory)"]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.stem + ".overlay.png" for p in images[::2])


@needs_export
def test_an_input_rewritten_after_it_was_classified_gets_no_overlay(
    explain_dir: Path, phantom_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The overlay shows the label the run gave: drawing it over other pixels (a drop folder
    rewritten between the model run and the overlay) would be a picture that lies."""
    import medvit_edge.inference.overlays as overlays

    sources = _test_images(phantom_dir, 3)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    images = [Path(shutil.copy(p, inputs / p.name)) for p in sources]
    real_read = overlays.read_bytes

    def rewritten_first(path: str) -> bytes:
        if path == str(images[1]):
            shutil.copyfile(sources[0], images[1])  # the scanner replaced it after the model ran
        return real_read(path)

    monkeypatch.setattr(overlays, "read_bytes", rewritten_first)
    out = tmp_path / "overlays"
    cfg = InferConfig(
        model=explain_dir / "model.onnx", inputs=[str(p) for p in images], overlays=out, progress=False
    )
    summary = infer(cfg)
    assert summary.overlay_failures == 1 and summary.exit_code == 1
    assert summary.errors == [
        f"{images[1]}: overlay not written ({images[1]} changed since it was classified; "
        "an overlay would show other pixels)"
    ]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.stem + ".overlay.png" for p in images[::2])
    assert all(row.input_sha256 for row in summary.rows)  # every row kept its input's hash


@needs_export
def test_cli_overlays_needs_an_explain_model_and_a_folder_outside_the_inputs(
    explain_dir: Path, phantom_dir: Path, tmp_path: Path
) -> None:
    lean = tmp_path / "lean"
    lean.mkdir()
    shutil.copy(explain_dir / "model.onnx", lean / "model.onnx")
    image = str(_test_images(phantom_dir, 1)[0])
    runner = CliRunner()
    result = runner.invoke(
        cli.main, ["infer", str(lean / "model.onnx"), image, "--overlays", str(tmp_path / "ov"), "--quiet"]
    )
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and "export with --explain" in result.stderr
    assert not (tmp_path / "ov").exists()
    given = ["--explain-model", str(explain_dir / "model.explain.onnx")]
    args = ["infer", str(lean / "model.onnx"), image, "--overlays", str(tmp_path / "ov"), *given, "--quiet"]
    result = runner.invoke(cli.main, args)
    assert result.exit_code == 0, result.output
    assert "1 overlays in" in result.stderr and len(list((tmp_path / "ov").glob("*.overlay.png"))) == 1
    folder = phantom_dir / "test"
    args = ["infer", str(explain_dir), str(folder), "--overlays", str(folder / "ov"), "--quiet"]
    result = runner.invoke(cli.main, args)
    assert result.exit_code == 2 and "inside the input folder" in result.stderr
    assert not (folder / "ov").exists()


def test_export_builds_the_explain_variant_last() -> None:
    from medvit_edge.export import ExportConfig

    cfg = ExportConfig(run_dir=Path("run"), int8=True, raw_input=True, explain=True)
    assert cfg.requested_variants() == ["fp32", "int8-dynamic", "fp32-raw", "int8-dynamic-raw", "explain"]
    assert ExportConfig(run_dir=Path("run")).requested_variants() == ["fp32"]
