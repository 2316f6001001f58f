"""The runtime and the CLI stay light: no torch, transformers, optimum or datasets on import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "optimum", "datasets", "onnx", "matplotlib")


def test_importing_the_runtime_and_cli_pulls_in_nothing_heavy() -> None:
    code = (
        "import sys, medvit_edge, medvit_edge.cli, medvit_edge.runtime.classifier, "
        "medvit_edge.inference.command, medvit_edge.hospital.node, medvit_edge.evaluation.evaluate; "
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_lazy_top_level_names_resolve() -> None:
    import medvit_edge

    assert medvit_edge.Classifier.__name__ == "Classifier"
    assert medvit_edge.PreprocessSpec().size == 224
