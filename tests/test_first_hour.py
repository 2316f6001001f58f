"""A new user's first hour: the traps that put a wrong model in front of its reader.

A retrain into a run folder leaves its old ONNX files behind (every consumer must refuse them);
a model that does not beat the majority class must be said so by train, export and evaluate;
a deployed folder with one file must still evaluate, check and benchmark.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from medvit_edge import cli
from medvit_edge.files import sha256_file
from medvit_edge.io.checkpoint import free_run_folder
from medvit_edge.runtime.freshness import weights_sha256

from .conftest import REPO, needs_export, needs_torch


def _cli(*args: object) -> Result:
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def _labels_csv(split_csv: Path, split: str, target: Path) -> Path:
    with open(split_csv, newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["split"] == split]
    with open(target, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows([str((split_csv.parent / row["path"]).resolve()), row["label"]] for row in rows)
    return target


@pytest.fixture(scope="module")
def retrained(tiny_export: Path, phantom_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """A copy of the exported tiny run, trained over for 2 steps (--exist-ok): its onnx/ is now
    stale and its model is no better than always answering one class."""
    run = tmp_path_factory.mktemp("retrained") / "run"
    shutil.copytree(tiny_export.parent, run)
    data = phantom_dir / "split.csv"
    refused = _cli("train", "--model", "tiny", "--data", data, "--output", run, "--max-steps", 2)
    result = _cli("train", "--model", "tiny", "--data", data, "--output", run, "--max-steps", 2, "--exist-ok")
    assert result.exit_code == 0, result.output
    return run, refused, result


@needs_export
def test_train_refuses_a_run_folder_that_holds_a_model(retrained: tuple, tmp_path: Path) -> None:
    run, refused, _ = retrained
    assert refused.exit_code == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "holds a trained model already" in lines[0] and "--exist-ok" in lines[0]
    # without --output, a default name that holds a model gives way to NAME-2, NAME-3
    assert free_run_folder(run) == run.with_name("run-2")
    shutil.copytree(run, run.with_name("run-2"), ignore=shutil.ignore_patterns("onnx", "checkpoints"))
    assert free_run_folder(run) == run.with_name("run-3")
    assert free_run_folder(tmp_path / "new") == tmp_path / "new"


@needs_export
def test_a_retrained_run_refuses_its_stale_export(retrained: tuple, phantom_dir: Path) -> None:
    """Trap A: the old ONNX files must not answer for the new weights."""
    run, _, _ = retrained
    images = phantom_dir / "test"
    for command in (
        ["infer", run, images],
        ["evaluate", run, "--no-plots"],
        ["check", run],
        ["info", run],
        ["benchmark", run, "--rounds", 1, "--runs", 1],
    ):
        result = _cli(*command)
        assert result.exit_code == 2, (command, result.output)
        assert "stale export" in result.stderr and f"medvit-edge export {run}" in result.stderr, command


@needs_export
def test_a_model_below_the_majority_baseline_is_said_out_loud(
    retrained: tuple, phantom_dir: Path, tmp_path: Path
) -> None:
    """Trap B: train, export and evaluate each print the baseline and warn."""
    run, _, trained = retrained
    assert "majority-class baseline" in trained.stdout
    warned = "does not beat" in trained.stderr or "recall 0" in trained.stderr
    assert "warning:" in trained.stderr and warned
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoints"))
    exported = _cli("export", copy, "--golden-images", 0)
    assert exported.exit_code == 0, exported.output
    assert "PyTorch model: validation accuracy" in exported.stdout
    assert "majority-class baseline" in exported.stdout and "warning:" in exported.stderr
    evaluated = _cli("evaluate", copy, "--no-plots", "--no-pytorch")
    assert evaluated.exit_code == 0, evaluated.output
    assert "majority-class baseline" in evaluated.stdout and "warning: fp32:" in evaluated.stderr
    assert "model only, batch 1, one preprocessed 64x64 tensor" in evaluated.stdout
    again = _cli("infer", copy, phantom_dir / "test" / "benign", "--quiet")  # fresh export: runs
    assert again.exit_code == 0, again.output


@needs_export
def test_a_deployed_folder_with_one_file_evaluates_checks_and_benchmarks(
    tiny_export: Path, phantom_dir: Path, tmp_path: Path
) -> None:
    deployed = tmp_path / "deployed"
    deployed.mkdir()
    for name in ("model.int8.onnx", "manifest.json", "golden"):
        source = tiny_export / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, deployed / name)
    labels = _labels_csv(phantom_dir / "split.csv", "test", tmp_path / "test.csv")
    evaluated = _cli("evaluate", deployed, "--data", labels, "--no-pytorch", "--no-plots")
    assert evaluated.exit_code == 0, evaluated.output
    assert "| int8-dynamic |" in evaluated.stdout and "| fp32 |" not in evaluated.stdout
    checked = _cli("check", deployed)
    assert checked.exit_code == 0, checked.output
    rows = [line.split()[0] for line in checked.stdout.splitlines()[1:] if line.strip()]
    assert "fp32" not in rows and "int8-dynamic" in rows
    assert "not in this folder (not checked): fp32, fp16" in checked.stdout
    timed = _cli("benchmark", deployed, "--rounds", 1, "--runs", 2)
    assert timed.exit_code == 0, timed.output
    assert "preprocess + model, batch 1, synthetic 640x480 frames" in timed.stdout


@needs_export
def test_evaluate_flags_an_external_set_made_of_training_images(
    tiny_export: Path, phantom_dir: Path, tmp_path: Path
) -> None:
    seen = _labels_csv(tiny_export.parent / "split.csv", "train", tmp_path / "seen.csv")
    result = _cli("evaluate", tiny_export.parent, "--data", seen, "--no-pytorch", "--no-plots")
    assert result.exit_code == 0, result.output
    assert "near-duplicates of the run's training/validation images" in result.stderr


@needs_export
def test_infer_into_a_closed_pipe_exits_quietly(tiny_export: Path, phantom_dir: Path) -> None:
    # `true` reads nothing and is gone long before infer writes: the write must meet a closed pipe
    command = f"{sys.executable} -m medvit_edge.cli infer {tiny_export} {phantom_dir} --quiet | true"
    done = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {command}"], capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    assert "Broken pipe" not in done.stderr and "Error" not in done.stderr, done.stderr


def test_the_weights_digest_follows_the_weights(tiny_run: Path, tmp_path: Path) -> None:
    """The digest beside the weights is read while it is newer than them, and redone after."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_run / "model.safetensors", run / "model.safetensors")
    digest = run / "model.safetensors.sha256"
    assert not digest.exists()
    assert weights_sha256(run) == sha256_file(run / "model.safetensors")
    assert digest.read_text().split() == [sha256_file(run / "model.safetensors"), "model.safetensors"]
    with open(run / "model.safetensors", "ab") as handle:  # other weights, same file
        handle.write(b"\0")
    assert weights_sha256(run) == sha256_file(run / "model.safetensors")
    assert digest.read_text().split()[0] == sha256_file(run / "model.safetensors")


@needs_torch
def test_resumed_training_reports_the_checkpoints_best(capsys: pytest.CaptureFixture[str]) -> None:
    """The "(best ...)" of the epoch lines starts from the resumed checkpoint's best, as
    metrics.json does, not from the first evaluation after resuming."""
    from types import SimpleNamespace

    from transformers import TrainerState

    from medvit_edge.progress import set_quiet
    from medvit_edge.train.trainer import ProgressCallback

    set_quiet(False)
    state = TrainerState(epoch=5.0, global_step=50, max_steps=100, best_metric=0.9)
    callback = ProgressCallback("balanced_accuracy", enabled=False)
    args = SimpleNamespace(num_train_epochs=10)
    callback.on_train_begin(args, state, None)
    callback.on_evaluate(args, state, None, metrics={"eval_balanced_accuracy": 0.5, "eval_loss": 1.0})
    assert "balanced_accuracy 0.5000 (best 0.9000)" in capsys.readouterr().err
