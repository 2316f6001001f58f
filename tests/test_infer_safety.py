"""`infer` at its edges: outputs that would destroy inputs, spreadsheet formulas,
NaN models, undecodable or hostile file names, unwritable outputs, signals, model folders."""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from medvit_edge import cli
from medvit_edge.files import atomic_writer
from medvit_edge.inference import output as output_module
from medvit_edge.inference.command import InferConfig, OutputWriteError, infer, resolve_model_path
from medvit_edge.progress import Progress

from .conftest import REPO, needs_export

pytestmark = needs_export

LABELS = ("benign", "malignant", "normal")


# --- helpers and fixtures ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(tiny_export: Path) -> Path:
    return tiny_export / "model.onnx"


@pytest.fixture()
def scans(phantom_dir: Path, tmp_path: Path) -> Path:
    """A folder of four real phantom scans: a.png, b.png, c.dcm-named copy, d.png."""
    folder = tmp_path / "scans"
    folder.mkdir()
    sources = sorted((phantom_dir / "test").rglob("*.png"))
    for name, source in zip(("a.png", "b.png", "d.png"), sources[::5]):
        shutil.copyfile(source, folder / name)
    shutil.copyfile(sources[1], folder / "c.dcm")  # not DICOM inside: an error row, still an input
    return folder


def _run_cli(args: list[str]) -> Result:
    return CliRunner().invoke(cli.main, ["infer", *[str(a) for a in args]])


def _one_line_error(result: Result) -> str:
    """The CLI's answer to a user error: exit 2, no traceback, one 'Error:' line on stderr."""
    assert result.exit_code == 2, result.output
    assert not isinstance(result.exception, Exception), result.exception  # SystemExit is no Exception
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _strict_json(line: str) -> Any:
    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(line, parse_constant=refuse)


# --- an output that is an input, or not a file --------------------------------------


@pytest.mark.parametrize(
    "spec, output",
    [
        ("{scans}", "{scans}/a.png"),  # found by walking the folder
        ("{scans}", "{scans}/c.dcm"),
        ("{scans}/*.png", "{scans}/b.png"),  # found by a glob
        ("{scans}/d.png", "{scans}/../scans/./d.png"),  # another spelling of the same file
    ],
)
def test_output_that_is_an_input_is_refused_and_the_input_kept(
    model: Path, scans: Path, spec: str, output: str
) -> None:
    before = _snapshot(scans)
    result = _run_cli([model, spec.format(scans=scans), "--output", output.format(scans=scans), "--quiet"])
    line = _one_line_error(result)
    assert "is the input" in line and "destroy" in line
    assert _snapshot(scans) == before


def test_output_named_like_a_table_but_an_input_is_refused(model: Path, scans: Path, tmp_path: Path) -> None:
    """The check is on resolved paths, not on extensions: a scan saved as .csv stays intact."""
    scan = tmp_path / "scan.csv"
    shutil.copyfile(scans / "a.png", scan)
    alias = tmp_path / "alias.png"
    alias.symlink_to(scan)
    before = scan.read_bytes()
    for inputs in ([scan], [alias], [tmp_path / "*.png"]):
        result = _run_cli([model, *inputs, "--output", scan, "--quiet"])
        assert "is the input" in _one_line_error(result)
        assert scan.read_bytes() == before
    labels = tmp_path / "labels.csv"
    labels.write_text(f"path,label\n{scans / 'a.png'},benign\n")
    result = _run_cli([model, scans / "a.png", "--labels", labels, "--output", labels, "--quiet"])
    assert f"this is the input {labels}" in _one_line_error(result)
    assert labels.read_text() == f"path,label\n{scans / 'a.png'},benign\n"


def test_outputs_that_are_not_files_or_formats_are_refused(model: Path, scans: Path, tmp_path: Path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    link = tmp_path / "link.csv"
    link.symlink_to(tmp_path / "elsewhere.csv")
    cases = {
        folder: "is a directory",
        fifo: "not a regular file",
        link: "symbolic link",
        tmp_path / "preds.txt": "use one of: .csv, .jsonl",
        tmp_path / "preds": "use one of: .csv, .jsonl",
        tmp_path / "missing" / "preds.csv": "does not exist",
    }
    if Path("/proc/self").is_dir():  # Linux: a folder no one may create files in, not even root
        cases[Path("/proc/preds.csv")] = "cannot write in /proc"
    for output, words in cases.items():
        result = _run_cli([model, scans, "--output", output, "--quiet"])
        line = _one_line_error(result)
        assert words in line and str(output) in line, line
        assert "predictions from" not in result.stderr  # refused before any work
    assert list(folder.iterdir()) == [] and not (tmp_path / "elsewhere.csv").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.csv", "out", "pipe.csv", "scans"]


# --- arguments checked before the run; a full disk at the end ------------------------


def test_bad_arguments_are_refused_before_the_run(model: Path, scans: Path, tmp_path: Path) -> None:
    line = _one_line_error(_run_cli([model, scans, "--batch-size", "0", "--quiet"]))
    assert "--batch-size must be at least 1" in line
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("file,class\na.png,benign\n", encoding="utf-8")
    line = _one_line_error(_run_cli([model, scans, "--labels", wrong, "--quiet"]))
    assert "'path' and 'label' columns" in line and "file, class" in line
    latin = tmp_path / "latin.csv"
    latin.write_bytes("path,label\nnévé.png,benign\n".encode("latin-1"))
    assert "cannot read it as a UTF-8 CSV" in _one_line_error(_run_cli([model, scans, "--labels", latin]))


def test_labels_csv_with_a_byte_order_mark(model: Path, phantom_dir: Path, tmp_path: Path) -> None:
    """Excel writes UTF-8 CSVs with a BOM: the 'path' column must still be found."""
    rows = list(csv.DictReader(io.StringIO((phantom_dir / "split.csv").read_text(encoding="utf-8"))))
    test_rows = [r for r in rows if r["split"] == "test"][:9]
    labels_csv = tmp_path / "labels.csv"
    text = "path,label\n" + "".join(f"{phantom_dir / r['path']},{r['label']}\n" for r in test_rows)
    labels_csv.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    summary = infer(
        InferConfig(
            model=model,
            inputs=[str(phantom_dir / r["path"]) for r in test_rows],
            labels_csv=labels_csv,
            progress=False,
        )
    )
    assert summary.metrics is not None and summary.metrics["n"] == 9


class _DiskFills:
    """Wraps the real atomic writer; the handle's writes fail with ENOSPC after ``limit`` chars."""

    def __init__(self, limit: int):
        self.limit, self.written = limit, 0
        self.real = atomic_writer

    @contextlib.contextmanager
    def __call__(self, path: Path, mode: str = "w") -> Iterator[Any]:
        with self.real(path, mode) as handle:
            outer = self

            class Full(io.TextIOBase):
                def write(self, text: str) -> int:
                    if outer.written + len(text) > outer.limit:
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    outer.written += len(text)
                    return handle.write(text)

            yield Full()


def test_full_disk_keeps_the_old_output_and_prints_the_rows(
    model: Path, scans: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = tmp_path / "preds.csv"
    output.write_text("previous,complete,results\n")
    monkeypatch.setattr(output_module, "atomic_writer", _DiskFills(limit=150))
    result = _run_cli([model, scans, "--output", output, "--quiet"])
    line = _one_line_error(result)
    assert str(output) in line and "No space left on device" in line and "stdout" in line
    assert output.read_text() == "previous,complete,results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preds.csv", "scans"]  # no temp file
    printed = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(printed) == 4 and {Path(r["path"]).name for r in printed} == {
        "a.png",
        "b.png",
        "c.dcm",
        "d.png",
    }
    assert "written to" not in result.stderr


def test_full_disk_from_the_library_raises_with_the_rows(
    model: Path, scans: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(output_module, "atomic_writer", _DiskFills(limit=10))
    output = tmp_path / "preds.jsonl"
    with pytest.raises(OutputWriteError) as caught:
        infer(InferConfig(model=model, inputs=[str(scans)], output=output, progress=False))
    assert len(caught.value.summary.rows) == 4 and caught.value.summary.output is None
    assert not output.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["scans"]


# --- spreadsheet formulas -------------------------------------------------------------

HOSTILE_NAMES = ["=cmd|' /C calc'!A0.png", "+1+1.png", "-2+3.png", "@SUM(A1).png", "\tx.png", "\rcr.png"]


def _relabelled_model(model: Path, folder: Path, labels: list[str], variant: str) -> Path:
    """The tiny model with other class names and variant in its metadata (a hostile exporter)."""
    import onnx

    proto = onnx.load(str(model))
    props = {p.key: p.value for p in proto.metadata_props}
    props.update(labels=json.dumps(labels), variant=variant)
    onnx.helper.set_model_props(proto, props)
    folder.mkdir(exist_ok=True)
    path = folder / "relabelled.onnx"
    onnx.save(proto, str(path))
    return path


def test_formula_cells_are_neutralised_and_recoverable(
    model: Path, scans: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in HOSTILE_NAMES:
        (scans / name).parent.mkdir(exist_ok=True)  # the issue's name is a folder "=cmd|' " + a file
        shutil.copyfile(scans / "a.png", scans / name)
    (scans / "=broken.png").write_text("not an image")  # its error cell starts with '=' too
    hostile = _relabelled_model(model, tmp_path / "m", ['=HYPERLINK("x")', "+b", "normal"], "@fp32")
    monkeypatch.chdir(scans)  # relative paths: each path cell starts with the file name
    inputs = [*HOSTILE_NAMES, "=broken.png"]
    summary = infer(InferConfig(model=hostile, inputs=inputs, output=tmp_path / "p.csv", progress=False))
    assert summary.failed_files == 1
    with open(tmp_path / "p.csv", newline="", encoding="utf-8") as handle:
        table = list(csv.reader(handle))
    header, rows = table[0], table[1:]
    hostile_labels = ['\'=HYPERLINK("x")', "'+b", "normal"]
    uids = ["study_uid", "series_uid", "sop_uid"]  # empty for images that are not DICOM
    fixed = ["path", "frame", "label", "decision"]  # decision: the model's policy (here its argmax)
    assert header == [*fixed, *hostile_labels, "variant", "model_sha256", "error", *uids]
    for cell in [c for row in table for c in row]:
        assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
    assert [row[0] for row in rows] == ["'" + name for name in inputs]  # strip one ' to recover
    assert {row[7] for row in rows} == {"'@fp32"}
    good = [row for row in rows if not row[9]]
    assert len(good) == len(HOSTILE_NAMES) and all(
        row[2] in ('\'=HYPERLINK("x")', "'+b", "normal") and row[3] == row[2] for row in good
    )
    for row in good:
        assert abs(sum(float(v) for v in row[4:7]) - 1) < 1e-4  # probabilities stay numbers
    assert rows[-1][9].startswith("'=broken.png")
    jsonl = tmp_path / "p.jsonl"
    infer(InferConfig(model=hostile, inputs=inputs, output=jsonl, progress=False))
    records = [_strict_json(line) for line in jsonl.read_text(encoding="utf-8").splitlines()]
    assert [r["path"] for r in records] == inputs and {r["variant"] for r in records} == {"@fp32"}


# --- NaN and infinite model outputs ---------------------------------------------------


def _poisoned_model(model: Path, folder: Path, poison: str) -> Path:
    """The tiny model with ``logits += f(mean of the input)``: f is NaN (``sqrt``) or +inf
    (``1/relu``) for an image darker than the normalisation mean, finite for a bright one."""
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load(str(model))
    graph = proto.graph
    size = json.loads({p.key: p.value for p in proto.metadata_props}["preprocess"])["size"]
    logits, pixels = graph.output[0].name, graph.input[0].name
    for node in graph.node:
        node.output[:] = ["raw_logits" if name == logits else name for name in node.output]
    weights = np.full((3 * size * size, 1), 1.0 / (3 * size * size), np.float32)
    graph.initializer.append(numpy_helper.from_array(weights, "mean_weights"))
    nodes = [
        helper.make_node("Flatten", [pixels], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "mean_weights"], ["mean"]),
    ]
    if poison == "nan":
        nodes.append(helper.make_node("Sqrt", ["mean"], ["extra"]))
    else:
        nodes += [
            helper.make_node("Relu", ["mean"], ["positive"]),
            helper.make_node("Reciprocal", ["positive"], ["extra"]),
        ]
    nodes.append(helper.make_node("Add", ["raw_logits", "extra"], [logits]))
    graph.node.extend(nodes)
    onnx.checker.check_model(proto)
    folder.mkdir(exist_ok=True)
    path = folder / f"{poison}.onnx"
    onnx.save(proto, str(path))
    return path


@pytest.mark.parametrize("poison", ["nan", "inf"])
def test_non_finite_outputs_are_error_rows(model: Path, tmp_path: Path, poison: str) -> None:
    poisoned = _poisoned_model(model, tmp_path / "models", poison)
    images = tmp_path / "images"
    images.mkdir()
    noise = np.random.default_rng(0).integers(0, 40, (64, 80, 3))
    for name, offset in (("black.png", 0), ("white.png", 215), ("black2.png", 10)):
        Image.fromarray((noise + offset).astype(np.uint8)).save(images / name)  # dark: mean < 0
    output = tmp_path / "preds.jsonl"
    summary = infer(
        InferConfig(model=poisoned, inputs=[str(images)], output=output, batch_size=3, progress=False)
    )
    records = {Path(r["path"]).name: r for r in map(_strict_json, output.read_text().splitlines())}
    for name in ("black.png", "black2.png"):
        assert records[name]["label"] == "" and records[name]["error"].endswith(
            "model output is not finite (NaN/inf)"
        )
        assert name in records[name]["error"] and all(records[name][c] is None for c in LABELS)
    assert records["white.png"]["error"] == "" and records["white.png"]["label"] in LABELS
    assert summary.failed_files == 2 and summary.predictions == 1 and summary.exit_code == 1
    result = _run_cli([poisoned, images, "--quiet"])
    assert result.exit_code == 1 and "2 failed" in result.stderr
    cells = [row[3:6] for row in csv.reader(io.StringIO(result.stdout))][1:]
    assert sorted(cells)[:2] == [["", "", ""], ["", "", ""]]  # no nan/inf probability anywhere
    assert not {c.lower() for row in cells for c in row} & {"nan", "inf", "-inf"}


# --- undecodable and hostile file names --------------------------------------


def test_undecodable_file_names_are_escaped_not_lost(model: Path, scans: Path, tmp_path: Path) -> None:
    folder = os.fsencode(scans)
    with open(folder + b"/good-\xff\xfe.png", "wb") as handle:
        handle.write((scans / "a.png").read_bytes())
    with open(folder + b"/bad-\xe9.png", "wb") as handle:
        handle.write(b"not an image")
    for suffix in ("csv", "jsonl"):
        output = tmp_path / f"preds.{suffix}"
        result = _run_cli([model, scans, "--output", output, "--quiet"])
        assert result.exit_code == 1, result.output
        text = output.read_bytes().decode("utf-8")  # strict: the file is valid UTF-8
        if suffix == "csv":
            cells = [c for row in csv.reader(io.StringIO(text)) for c in row]
        else:
            cells = [str(v) for line in text.splitlines() for v in _strict_json(line).values()]
        assert any(c.endswith("/good-\\xff\\xfe.png") for c in cells)
        assert any(c.endswith("/bad-\\xe9.png") for c in cells)
        assert any("/bad-\\xe9.png: " in c for c in cells)  # the error cell too
        assert "bad-\\xe9.png" in result.stderr  # the error, escaped the same way
    rows = list(csv.DictReader(io.StringIO((tmp_path / "preds.csv").read_text(encoding="utf-8"))))
    escaped = next(r["path"] for r in rows if "good-" in r["path"])
    recovered = escaped.encode().decode("unicode_escape").encode("latin-1")  # \xNN -> byte
    assert os.path.isfile(recovered) and recovered == folder + b"/good-\xff\xfe.png"


def test_control_characters_in_names_never_reach_the_terminal(model: Path, scans: Path) -> None:
    evil = scans / "evil\x1b[2J\x1b]0;owned\x07.png"
    evil.write_text("not an image")
    result = _run_cli([model, scans])  # CSV on stdout; progress and errors on stderr
    assert result.exit_code == 1
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
    assert "evil\\x1b[2J\\x1b]0;owned\\x07.png" in result.stderr
    stream = io.StringIO()
    progress = Progress(2, unit="files", stream=stream)
    progress.update(note="last: evil\x1b[2J.png")
    assert "\x1b" not in stream.getvalue() and "evil\\x1b[2J.png" in stream.getvalue()


# --- a run folder or its onnx/ folder as MODEL ---------------------------------------


def _model_folder(tiny_export: Path, tmp_path: Path, int8_status: str | None) -> Path:
    run = tmp_path / "run"
    onnx_dir = run / "onnx"
    onnx_dir.mkdir(parents=True)
    for name in ("model.onnx", "model.int8.onnx"):
        shutil.copyfile(tiny_export / name, onnx_dir / name)
    if int8_status is not None:
        manifest = json.loads((tiny_export / "manifest.json").read_text())
        manifest["variants"] = [v for v in manifest["variants"] if v["file"] != "model.fp16.onnx"]
        # the export's speed recommendation (fp32 and int8 time alike on the tiny model) would
        # override the preference order this test is about
        manifest.pop("recommended", None)
        for entry in manifest["variants"]:
            entry["status"] = int8_status if entry["file"] == "model.int8.onnx" else "passed"
        (onnx_dir / "manifest.json").write_text(json.dumps(manifest))
    return run


@pytest.mark.parametrize(
    "int8_status, expected", [("passed", "model.int8.onnx"), ("failed", "model.onnx"), (None, "model.onnx")]
)
def test_model_folder_picks_the_validated_variant(
    tiny_export: Path, scans: Path, tmp_path: Path, int8_status: str | None, expected: str
) -> None:
    run = _model_folder(tiny_export, tmp_path, int8_status)
    assert resolve_model_path(run) == run / "onnx" / expected
    assert resolve_model_path(run / "onnx") == run / "onnx" / expected
    variant = "int8-dynamic" if expected == "model.int8.onnx" else "fp32"
    for model_arg in (run, run / "onnx"):
        result = _run_cli([model_arg, scans / "a.png", "--quiet"])
        assert result.exit_code == 0, result.output
        assert f"using {run / 'onnx' / expected} ({variant})" in result.stderr
        # ... variant, model_sha256, error (empty), then three empty DICOM identifier columns
        assert result.stdout.splitlines()[1].endswith(f",{variant},{_sha(run / 'onnx' / expected)},,,,")


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_model_folder_without_a_usable_model_lists_its_files(
    tiny_export: Path, scans: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "onnx"
    folder.mkdir()
    shutil.copyfile(tiny_export / "model.fp16.onnx", folder / "model.fp16.onnx")
    (folder / "notes.txt").write_text("x")
    line = _one_line_error(_run_cli([folder, scans / "a.png"]))
    assert "no usable model" in line and ".onnx files there: model.fp16.onnx" in line and "notes" not in line
    empty = tmp_path / "empty"
    empty.mkdir()
    assert ".onnx files there: none" in _one_line_error(_run_cli([empty, scans / "a.png"]))


# --- the empty input set ----------------------------------------------------------------------


def test_no_input_files_is_not_a_silent_success(model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "no images here"
    folder.mkdir()
    (folder / "notes.txt").write_text("scans are elsewhere")
    result = _run_cli([model, folder, "--quiet"])
    assert result.exit_code == 1
    assert f"no input files found in {folder} (1 skipped: 1 not an image)" in result.stderr


# --- SIGTERM and SIGHUP --------------------------------------------------------------

# Runs the real CLI in a child process; its output writer stops half-way and waits, so the
# signal arrives while the temporary file is open, every time.
SLOW_WRITER = """
import sys, time
from pathlib import Path
import medvit_edge.inference.output as output_module
from medvit_edge import cli

real = output_module.format_predictions

def slow(handle, rows, labels, **kwargs):
    handle.write("path,frame,label\\n")
    handle.flush()
    Path(sys.argv[1]).write_text("writing")
    time.sleep(120)
    real(handle, rows, labels, **kwargs)

output_module.format_predictions = slow
cli.main(sys.argv[2:], prog_name="medvit-edge")
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_signal_while_writing_leaves_no_temp_file(
    model: Path, scans: Path, tmp_path: Path, signum: int
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    output = out_dir / "preds.csv"
    output.write_text("previous,complete,results\n")
    ready = tmp_path / "ready"
    command = [sys.executable, "-c", SLOW_WRITER, str(ready), "infer", str(model), str(scans)]
    process = subprocess.Popen(
        [*command, "--output", str(output), "--quiet"], cwd=REPO, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_for(lambda: ready.exists() or process.poll() is not None, seconds=120)
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        assert any(p.name.endswith(".tmp") for p in out_dir.iterdir())  # caught mid-write
        process.send_signal(signum)
        stderr = process.communicate(timeout=60)[1]
    finally:
        process.kill()
    assert process.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr and f"stopped by {signal.Signals(signum).name}" in stderr
    assert output.read_text() == "previous,complete,results\n"
    assert [p.name for p in out_dir.iterdir()] == ["preds.csv"]


def test_sigterm_during_a_real_run_keeps_the_old_output(model: Path, scans: Path, tmp_path: Path) -> None:
    """No hook at all: a long real run stopped once its progress shows it is under way."""
    for index in range(300):
        os.link(scans / "a.png", scans / f"copy{index:03d}.png")
    output = tmp_path / "preds.csv"
    output.write_text("previous,complete,results\n")
    command = [sys.executable, "-m", "medvit_edge.cli", "infer", str(model), *([str(scans)] * 10)]
    process = subprocess.Popen(
        [*command, "--output", str(output), "--batch-size", "1"],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        seen = ""
        while "files" not in seen.rpartition("\n")[0][-200:]:  # the first progress line
            line = process.stderr.readline()
            assert line, seen
            seen += line
        process.send_signal(signal.SIGTERM)
        stderr = seen + process.communicate(timeout=60)[1]
    finally:
        process.kill()
    assert process.returncode == 143, stderr
    assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr
    assert output.read_text() == "previous,complete,results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preds.csv", "scans"]


def _wait_for(condition: Any, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the child process never got there")
        time.sleep(0.05)
