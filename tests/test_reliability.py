"""Bad input, tampered models, interrupted training, and no unpickling anywhere."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medvit_edge.inference.command import InferConfig, infer
from medvit_edge.runtime.classifier import Classifier, ModelLoadError

from .conftest import REPO, needs_export, needs_torch
from .dicom_files import write_us_dicom

GOOD = "good"


def _corpus(folder: Path, base_image: Path) -> dict[str, str]:
    """Every awkward input, mapped to GOOD (must predict) or a word its error must contain."""
    base = Image.open(base_image).convert("RGB")
    grey = base.convert("L")
    cases: dict[str, str] = {}

    def save(name: str, image: Image.Image, outcome: str = GOOD, **kwargs: object) -> None:
        image.save(folder / name, **kwargs)
        cases[name] = outcome

    save("palette.png", base.convert("P", palette=Image.Palette.ADAPTIVE))
    save("grey alpha (LA).png", grey.convert("LA"))
    save("rgba.png", base.convert("RGBA"))
    save("cmyk.jpg", base.convert("CMYK"))
    save("sixteen-bit.png", Image.fromarray(np.asarray(grey).astype(np.uint16) * 257))
    rotated = base.resize((300, 200))
    exif = rotated.getexif()
    exif[0x0112] = 8
    save("exif rotated.jpg", rotated, exif=exif)
    frames = [grey, grey.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:])
    cases["animated.gif"] = GOOD
    ramp = np.linspace(0, 255, 10000).astype(np.uint8)  # content: a constant image is refused
    save("thin 1x10000.png", Image.fromarray(ramp[:, None]))
    save("flat 10000x1.png", Image.fromarray(ramp[None, :]))
    save("ñame with spaces (1).png", base)
    save("bomb.png", Image.new("L", (3000, 3000)), "too many pixels")
    (folder / "empty.png").write_bytes(b"")
    cases["empty.png"] = "not a readable image"
    (folder / "text.png").write_text("just text")
    cases["text.png"] = "not a readable image"
    data = (folder / "rgba.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    cases["truncated.png"] = "truncated.png"
    base.save(folder / "truncated.jpg", quality=95)
    (folder / "truncated.jpg").write_bytes((folder / "truncated.jpg").read_bytes()[:300])
    cases["truncated.jpg"] = "truncated.jpg"
    (folder / "dangling.png").symlink_to(folder / "gone.png")
    cases["dangling.png"] = "not found"
    (folder / "loop.png").symlink_to(folder / "loop.png")
    cases["loop.png"] = "loop.png"
    os.mkfifo(folder / "pipe.png")  # opening it would block forever
    cases["pipe.png"] = "not a regular file"
    if os.geteuid() != 0:  # root reads anything; elsewhere a 000 file is unreadable
        (folder / "locked.png").write_bytes(data)
        (folder / "locked.png").chmod(0)
        cases["locked.png"] = "permission denied"
    dicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    write_us_dicom(folder / "scan.dcm", [np.asarray(base)])
    cases["scan.dcm"] = GOOD
    (folder / "no pixels.dcm").write_bytes(Path(get_testdata_file("rtplan.dcm")).read_bytes())
    cases["no pixels.dcm"] = "no pixel data"
    # 12-bit JPEG Extended: no decoder in the [dicom] extra (JPEG-LS has one, through highdicom)
    (folder / "jpeg-ext.dcm").write_bytes(Path(get_testdata_file("JPGExtended.dcm")).read_bytes())
    cases["jpeg-ext.dcm"] = "transfer syntax"
    del dicom
    return cases


@needs_export
def test_bad_input_corpus(tiny_export: Path, phantom_dir: Path, tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    cases = _corpus(folder, next((phantom_dir / "test" / "benign").glob("*.png")))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2_000_000)  # makes bomb.png a bomb, nothing else
    output = tmp_path / "preds.jsonl"
    summary = infer(
        InferConfig(
            model=tiny_export / "model.int8.onnx", inputs=[str(folder)], output=output, progress=False
        )
    )
    rows = {Path(json.loads(line)["path"]).name: json.loads(line) for line in output.read_text().splitlines()}
    assert set(rows) == set(cases)
    for name, outcome in cases.items():
        row = rows[name]
        if outcome == GOOD:
            assert row["error"] == "" and row["label"] in ("benign", "malignant", "normal"), (
                name,
                row["error"],
            )
            assert np.isfinite([row["benign"], row["malignant"], row["normal"]]).all()
        else:
            assert outcome in row["error"] and name in row["error"], (name, row["error"])
            assert row["label"] == "" and row["benign"] is None
    bad = sum(outcome != GOOD for outcome in cases.values())
    assert summary.failed_files == bad and summary.exit_code == 1
    print(f"\nbad-input corpus: {len(cases)} inputs, {len(cases) - bad} predicted, {bad} clear errors")


@needs_export
def test_external_data_outside_the_model_folder_is_refused(tmp_path: Path) -> None:
    import shutil

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [weight],
    )
    models, outside = tmp_path / "models", tmp_path / "outside"
    models.mkdir()
    outside.mkdir()
    path = models / "escape.onnx"
    onnx.save(
        helper.make_model(graph), str(path), save_as_external_data=True, location="w.bin", size_threshold=0
    )
    model = onnx.load(str(path), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "../outside/w.bin"
    onnx.save(model, str(path))
    shutil.move(models / "w.bin", outside / "w.bin")
    with pytest.raises(ModelLoadError, match="escapes model directory"):
        Classifier.load(path)


@needs_export
def test_input_shape_that_contradicts_metadata_is_refused(tiny_export: Path, tmp_path: Path) -> None:
    import onnx

    model = onnx.load(str(tiny_export / "model.onnx"))
    for prop in model.metadata_props:
        if prop.key == "preprocess":
            spec = json.loads(prop.value)
            spec.update(size=96, resize_size=96)
            prop.value = json.dumps(spec)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value, dims[3].dim_value = 64, 64
    wrong = tmp_path / "wrong-size.onnx"
    onnx.save(model, str(wrong))
    with pytest.raises(ModelLoadError, match=r"input shape .* does not match \(N, 3, 96, 96\)"):
        Classifier.load(wrong)


@needs_torch
def test_training_killed_mid_run_resumes_to_the_same_step_count(phantom_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "medvit_edge.cli",
        "train",
        "--model",
        "tiny",
        "--data",
        str(phantom_dir / "split.csv"),
        "--epochs",
        "3",
        "--lr",
        "1e-3",
        "--batch-size",
        "16",
        "--workers",
        "0",
        "--output",
        str(run),
        "--seed",
        "0",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    deadline = time.monotonic() + 120
    while (
        not list((run / "checkpoints").glob("checkpoint-*/trainer_state.json"))
        and time.monotonic() < deadline
    ):
        time.sleep(0.02)
    process.kill()
    process.wait()
    assert process.returncode == -9, "training ended before the test could kill it"
    assert not (run / "metrics.json").exists()
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, cwd=REPO)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stderr
    with open(run / "split.csv", newline="") as handle:
        train_images = sum(row["split"] == "train" for row in csv.DictReader(handle))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 3 * -(-train_images // 16)  # every epoch's steps, none repeated or lost
    assert "test" in metrics and metrics["test"]["n"] == 24


@needs_torch
def test_resume_skips_a_checkpoint_interrupted_while_saving(tmp_path: Path) -> None:
    from medvit_edge.train.run import CHECKPOINT_FILES, _last_checkpoint

    folder = tmp_path / "checkpoints"
    for step, files in (
        (5, CHECKPOINT_FILES),
        (10, CHECKPOINT_FILES),
        (15, ("model.safetensors", "optimizer.pt")),
    ):
        (folder / f"checkpoint-{step}").mkdir(parents=True)
        for name in files:
            (folder / f"checkpoint-{step}" / name).write_text("{}")
    assert _last_checkpoint(folder) == str(folder / "checkpoint-10")
    (folder / "checkpoint-10" / "trainer_state.json").write_text('{"trunc')
    assert _last_checkpoint(folder) == str(folder / "checkpoint-5")


def _call_arguments(text: str, open_paren: int) -> str:
    """The text between a call's parenthesis and its matching close."""
    depth = 0
    for index in range(open_paren, len(text)):
        depth += {"(": 1, ")": -1}.get(text[index], 0)
        if depth == 0:
            return text[open_paren + 1 : index]
    return text[open_paren + 1 :]


def test_no_unpickling_anywhere() -> None:
    """Weights come from safetensors only; nothing in the package calls pickle or a bare torch.load."""
    offenders = []
    for path in [*REPO.glob("medvit_edge/*.py"), *REPO.glob("train/*.py"), *REPO.glob("export/*.py")]:
        text = path.read_text()
        for match in re.finditer(r"torch\.load\(", text):
            if "weights_only=True" not in _call_arguments(text, match.end() - 1):
                offenders.append(f"{path.name}: torch.load without weights_only=True")
        if re.search(r"^\s*import (c?pickle|dill|joblib)|pickle\.loads?\(", text, re.M):
            offenders.append(f"{path.name}: pickle")
        for match in re.finditer(r"AutoModel\w*\.from_pretrained\(", text):
            if "use_safetensors=True" not in _call_arguments(text, match.end() - 1):
                offenders.append(f"{path.name}: model from_pretrained without use_safetensors=True")
    assert offenders == []
