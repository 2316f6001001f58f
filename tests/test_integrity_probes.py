"""A hostile user's argument mistakes and interruptions: one line and exit 2 for a bad number,
130 for Ctrl-C, never a traceback or "some inputs failed"."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from medvit_edge import cli

from .conftest import REPO, needs_export


def _one_line_exit_2(arguments: list[str], words: str) -> None:
    result = CliRunner().invoke(cli.main, arguments)
    assert result.exit_code == 2, (result.output, result.exception)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and words in errors[0], result.stderr
    assert "Traceback" not in result.output


@needs_export
def test_numbers_that_cannot_work_are_refused_first(
    tiny_export: Path, tiny_run: Path, busi_images: list[Path], tmp_path: Path
) -> None:
    image = str(busi_images[0])
    _one_line_exit_2(
        ["infer", str(tiny_export), image, "--batch-size", "100000000"], "--batch-size must be from 1"
    )
    _one_line_exit_2(
        ["check", str(tiny_export), "--threads", "-3"], "--threads must be 0 (all cores) or more"
    )
    evaluate = ["evaluate", str(tiny_run), "--threads", "-2", "--output", str(tmp_path / "evaluation")]
    _one_line_exit_2(evaluate, "--threads must be at least 1")


@needs_export
def test_ctrl_c_exits_130_and_writes_nothing(tiny_export: Path, busi_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "predictions.csv"
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "medvit_edge.cli",
            "infer",
            str(tiny_export),
            str(busi_dir),
            "--output",
            str(output),
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as from a terminal
    )
    assert child.stderr is not None
    for line in child.stderr:  # the run is under way: files are being classified
        if "files" in line:
            break
    child.send_signal(signal.SIGINT)
    _, rest = child.communicate(timeout=300)
    assert child.returncode == 130, rest
    assert "Interrupted" in rest and "Traceback" not in rest and not output.exists()
