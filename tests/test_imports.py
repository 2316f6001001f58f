"""The runtime and the CLI stay light: no torch, transformers, optimum or datasets on import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "optimum", "datasets", "onnx", "matplotlib")


def test_importing_the_runtime_and_cli_pulls_in_nothing_heavy() -> None:
    code = (
        "import sys, medvit_edge, medvit_edge.cli, medvit_edge.runtime, medvit_edge.infer, "
        "medvit_edge.evaluate; "
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_lazy_top_level_names_resolve() -> None:
    import medvit_edge

    assert medvit_edge.Classifier.__name__ == "Classifier"
    assert medvit_edge.PreprocessSpec().size == 224


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-local imports included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            # train/ and export/ are installed as medvit_edge.train / medvit_edge.export
            parent = path.parent.name
            package = ["medvit_edge"] + ([parent] if parent != "medvit_edge" else [])
            if node.level:
                base = package[: len(package) - node.level + 1]
                found.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                found.add(node.module)
    return found


def _violations(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(REPO)} imports {module}"
        for path in files
        for module in sorted(_imported_modules(path))
        if module.startswith(forbidden)
    ]


def test_the_runtime_imports_nothing_from_train_export_or_demo() -> None:
    """The runtime package's modules (all but the CLI adapter and the demo group) depend on no
    stage; train and export depend on the runtime package, never on each other."""
    runtime = [p for p in (REPO / "medvit_edge").glob("*.py") if p.name != "cli.py"]
    assert len(runtime) > 15
    stages = ("medvit_edge.train", "medvit_edge.export", "medvit_edge.demo")
    assert _violations(runtime, stages) == []
    assert (
        _violations(sorted((REPO / "train").glob("*.py")), ("medvit_edge.export", "medvit_edge.demo")) == []
    )
    # one exception: export builds token-merged graphs with the very module training merges with
    # (medvit_edge.train.merging: torch only, no training code), so both run the same computation
    exported = _violations(sorted((REPO / "export").glob("*.py")), ("medvit_edge.train", "medvit_edge.demo"))
    assert [v for v in exported if not v.endswith(" imports medvit_edge.train.merging")] == []


def test_the_scan_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The scan above is not vacuous: it catches relative and function-local imports."""
    (tmp_path / "train").mkdir()
    bad = tmp_path / "train" / "x.py"
    bad.write_text("def f():\n    from ..export.run import export\n    import medvit_edge.demo\n")
    assert _imported_modules(bad) == {"medvit_edge.export.run", "medvit_edge.demo"}
