"""The package's boundaries, computed from the source (imports inside functions and under
``TYPE_CHECKING`` count): no import cycles, and every import goes down the layers below, so
the runtime an integrator embeds can be read (and shipped) without the applications around it."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# train/ and export/ are installed as medvit_edge.train / medvit_edge.export (pyproject package-dir)
ROOTS = {
    "medvit_edge": REPO / "medvit_edge",
    "medvit_edge.train": REPO / "train",
    "medvit_edge.export": REPO / "export",
}

# The most specific prefix wins. A module may import its own package and any lower layer; two
# packages of the same layer never import each other ("sideways"). A module given a lower layer
# than its package (evaluation.metrics, train.merging) may import none of its package's higher ones.
LAYERS: dict[str, int] = {
    "medvit_edge": 0,  # the package's lazy public API (imports nothing eagerly)
    "medvit_edge.errors": 0,
    "medvit_edge.files": 0,
    "medvit_edge.system": 0,
    "medvit_edge.timing": 0,
    "medvit_edge.lazy": 0,
    "medvit_edge.options": 0,
    "medvit_edge.progress": 0,
    "medvit_edge.runtime": 1,  # what an integrator embeds
    "medvit_edge.io": 2,  # inputs: images, DICOM, folders, labelled sets, run folders
    "medvit_edge.evaluation.metrics": 2,  # pure numpy, used by every stage
    "medvit_edge.inference.engine": 3,  # decode, batch, classify; the typed prediction rows
    "medvit_edge.inference.rows": 3,
    "medvit_edge.inference.decoding": 3,
    "medvit_edge.inference.output": 3,
    "medvit_edge.inference.explain": 3,
    "medvit_edge.hospital": 4,  # audit log, DICOM SR, the DICOM node (built on the engine)
    "medvit_edge.inference": 5,  # the infer command and its options (writes SRs and audits)
    "medvit_edge.deploy": 5,
    "medvit_edge.evaluation": 5,
    # the one model-surgery module both heavy stages share: training merges tokens with it and
    # export traces it into token-merged graphs; below them so neither stage imports the other
    "medvit_edge.train.merging": 5,
    "medvit_edge.train": 6,  # the heavy stages and the front ends
    "medvit_edge.export": 6,
    "medvit_edge.demo": 7,
    "medvit_edge.cli": 8,
}


def _modules() -> dict[str, Path]:
    found = {}
    for name, root in ROOTS.items():
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([name, *parts])] = path
    return found


def _imports(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in known else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name in known and name != module}


def import_graph() -> dict[str, set[str]]:
    known = _modules()
    return {module: _imports(module, path, known) for module, path in known.items()}


def _layer(module: str) -> tuple[int, str]:
    """(layer, package): the package is the subpackage of ``medvit_edge`` the module lives in
    (the foundation modules count as one)."""
    prefix = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    level = LAYERS[prefix]
    return level, "foundation" if level == 0 else ".".join(module.split(".")[:2])


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative enough)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _is_own_reexport(importer: str, imported: str) -> bool:
    """A package ``__init__`` re-exporting its own children is not a cycle."""
    return imported.startswith(importer + ".")


def test_no_import_cycles() -> None:
    graph = {m: {d for d in deps if not _is_own_reexport(m, d)} for m, deps in import_graph().items()}
    assert cycles(graph) == []


def test_imports_go_down_the_layers() -> None:
    wrong = []
    for module, deps in import_graph().items():
        level, package = _layer(module)
        for dep in deps:
            dep_level, dep_package = _layer(dep)
            if (dep_package == package and dep_level <= level) or _is_own_reexport(module, dep):
                continue
            if dep_level >= level:
                wrong.append(f"{module} (layer {level}) imports {dep} (layer {dep_level})")
    assert wrong == []


def test_the_runtime_is_one_folder_an_integrator_can_copy() -> None:
    allowed = {f"medvit_edge.{name}" for name in ("errors", "files", "system", "timing", "options", "lazy")}
    outside = sorted(
        f"{module} -> {dep}"
        for module, deps in import_graph().items()
        if module.startswith("medvit_edge.runtime")
        for dep in deps
        if not dep.startswith("medvit_edge.runtime") and dep not in allowed
    )
    assert outside == []


def test_the_checker_sees_a_planted_cycle_and_a_sideways_import() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert _layer("medvit_edge.inference.command") == (5, "medvit_edge.inference")
    assert _layer("medvit_edge.inference.engine") == (3, "medvit_edge.inference")
    assert _layer("medvit_edge.errors") == _layer("medvit_edge.files") == (0, "foundation")
    assert _layer("medvit_edge.deploy.info")[0] == _layer("medvit_edge.evaluation.evaluate")[0]
    assert _layer("medvit_edge.train.merging") == (5, "medvit_edge.train") < _layer("medvit_edge.export.run")
