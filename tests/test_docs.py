"""The docs cannot drift: every shell and Python snippet in README.md and docs/ runs here.

The convention, for whoever writes a page:

- A fenced block in ``bash``, ``sh``, ``shell``, ``console``, ``python`` or ``py`` is run.
  Blocks in other languages (``cpp``, ``csharp``, ``js``, ``json``, ``text``, ``yaml``) are
  shown, not run.
- A block that cannot run here (a GPU, a cluster, the model hub, a server that runs until
  stopped, another machine) carries the line ``<!-- not-run: REASON -->`` just above its fence.
  The reason is required. Its ``medvit-edge`` lines are still parsed: a command or option that
  does not exist fails the test even there.
- The blocks of one page run in order in one fresh folder that holds these names, so a page
  reads like a session at a shell:

  | name            | what                                                                  |
  |-----------------|-----------------------------------------------------------------------|
  | ``models/busi/`` | a run folder, trained and exported (fp32, fp16, int8, golden files)   |
  | ``data/busi/``   | a labelled set: ``split.csv`` and one sub-folder per class             |
  | ``scans/``       | images in one sub-folder per class                                    |
  | ``scan.png``     | one image                                                             |
  | ``dicom/``       | ultrasound DICOM files with patient, study and series, as a scanner writes them |

  They are the session fixtures' tiny ViT and phantom images, so every number a snippet prints
  is a toy's; what is checked is that every command and call works as written.
- A shell line is one of: ``medvit-edge …`` (run in the test's interpreter, the page's folder as
  working directory; it must exit 0), ``pip install …`` (not run;
  every extra it names must exist in pyproject.toml), ``make TARGET`` (not run; the target must
  exist in the Makefile). Anything else needs the not-run marker. ``#`` starts a comment and
  ``\\`` continues a line, as in bash.
- ``medvit-edge train`` runs with ``--max-steps 4`` added, ``medvit-edge demo`` with
  ``--epochs 1 --data data/busi`` (the phantoms above: ``tests/test_demo.py`` runs the demo as
  shipped) and ``medvit-edge export`` with ``--allow-degraded`` (four steps make no model worth
  validating): the commands are checked, not the toy model's quality.
- A Python block runs as a script (``__main__``) in the test's interpreter, the page's folder as
  working directory.
"""

from __future__ import annotations

import re
import runpy
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from traceback import format_exception

import pytest

from .conftest import REPO

RUN_LANGUAGES = {"bash", "sh", "shell", "console", "python", "py"}
MARKER = re.compile(r"<!--\s*not-run:\s*(.*?)\s*-->")
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+)\s*(?P<info>[^\n`]*)$")


@dataclass(frozen=True)
class Block:
    page: str
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    not_run: str | None  # the reason, or None when the block runs

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def doc_pages() -> list[Path]:
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    return [p for p in pages if p.is_file()]


def extract_blocks(path: Path, page: str | None = None) -> list[Block]:
    """Fenced blocks of a markdown file, with the not-run marker of the line above each."""
    lines = path.read_text(encoding="utf-8").splitlines()
    page = page or str(path.relative_to(REPO))
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            body.append(lines[j][indent:])
            j += 1
        above = lines[i - 1].strip() if i > 0 else ""
        marker = MARKER.fullmatch(above)
        language = (opening["info"].split() or [""])[0].lower()
        blocks.append(Block(page, i + 1, language, "\n".join(body), marker[1] if marker else None))
        i = j + 1
    return blocks


def all_blocks() -> list[Block]:
    return [b for page in doc_pages() for b in extract_blocks(page) if b.language in RUN_LANGUAGES]


def shell_commands(code: str) -> list[list[str]]:
    """Each command line of a shell block as argv, comments dropped, continuations joined."""
    joined = re.sub(r"\\\n", " ", code)
    commands = []
    for line in joined.splitlines():
        argv = shlex.split(line, comments=True)
        if argv:
            commands.append(argv)
    return commands


def medvit_args(argv: list[str]) -> list[str] | None:
    """The arguments of a medvit-edge command, also when launched as ``-m medvit_edge.cli``."""
    if argv[0] == "medvit-edge":
        return argv[1:]
    if "medvit_edge.cli" in argv:
        return argv[argv.index("medvit_edge.cli") + 1 :]
    return None


def test_every_runnable_block_is_in_a_known_language_or_marked() -> None:
    blocks = all_blocks()
    assert len(blocks) > 10, "the docs have no snippets: the extraction is broken"
    for block in blocks:
        if block.not_run is not None:
            assert block.not_run, f"{block.where}: <!-- not-run: … --> needs a reason"


def test_extraction_reads_markers_and_continuations(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "text\n<!-- not-run: GPU -->\n```bash\nmedvit-edge train --data d \\\n  --output o  # x\n```\n"
        "```python\nprint(1)\n```\n",
        encoding="utf-8",
    )
    first, second = extract_blocks(page, "page.md")
    assert (first.language, first.not_run, first.line) == ("bash", "GPU", 3)
    assert shell_commands(first.code) == [["medvit-edge", "train", "--data", "d", "--output", "o"]]
    assert (second.language, second.not_run, second.code) == ("python", None, "print(1)")


def _extras() -> set[str]:
    """The names under [project.optional-dependencies] (no tomllib: Python 3.10 lacks it)."""
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return {m[1] for m in re.finditer(r"^([\w-]+)\s*=", section, flags=re.MULTILINE)}


def _make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    return {m[1] for m in re.finditer(r"^([A-Za-z][\w-]*):", text, flags=re.MULTILINE)}


def check_pip_line(argv: list[str], where: str) -> None:
    extras = _extras()
    for arg in argv[2:]:
        named = re.fullmatch(r"(?:medvit-edge|\.)\[([\w,-]+)\]", arg)
        if named:
            unknown = set(named[1].split(",")) - extras
            assert not unknown, f"{where}: `{' '.join(argv)}` names extras {unknown} not in pyproject.toml"


def parse_only(args: list[str], where: str) -> None:
    """Click's parser reads the command line without converting values or running anything: the
    command and every option named exist (paths need not)."""
    import click

    from medvit_edge.cli import main

    try:
        group = click.Context(main, info_name="medvit-edge")
        _, rest, _ = main.make_parser(group).parse_args(list(args))
        assert rest, f"{where}: `medvit-edge {shlex.join(args)}` names no command"
        command = main.get_command(group, rest[0])
        assert command is not None, f"{where}: `medvit-edge {shlex.join(args)}`: no command {rest[0]!r}"
        ctx = click.Context(command, info_name=rest[0], parent=group)
        command.make_parser(ctx).parse_args(list(rest[1:]))
    except click.UsageError as exc:
        pytest.fail(f"{where}: `medvit-edge {shlex.join(args)}`: {exc.format_message()}")


def test_parse_only_refuses_what_does_not_exist() -> None:
    parse_only(["infer", "models/x", "/archive", "--engine", "ray", "--address", "auto"], "ok")
    wrong_lines = (["infer", "m", "x", "--no-such"], ["no-such-command", "x"], ["train", "--batch", "3"])
    for wrong in wrong_lines:
        with pytest.raises((pytest.fail.Exception, AssertionError)):
            parse_only(wrong, "wrong")


def run_medvit(args: list[str], cwd: Path, where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command in this interpreter (click's runner, the page's folder as working directory):
    the modules a command needs are imported once per suite, not once per snippet, which is
    most of a toy export's time. Running as a process (exit codes, streams) is the CLI tests'."""
    from click.testing import CliRunner

    from medvit_edge.cli import main

    if args and args[0] == "train" and "--max-steps" not in args:
        args = [*args, "--max-steps", "4"]
    if args and args[0] == "export" and "--allow-degraded" not in args:
        args = [*args, "--allow-degraded"]
    if args and args[0] == "demo" and "--epochs" not in args:
        args = [*args, "--epochs", "1"]
    if args and args[0] == "demo" and "--data" not in args:
        args = [*args, "--data", "data/busi"]  # the phantoms already made: test_demo makes its own
    with monkeypatch.context() as patch:
        patch.chdir(cwd)
        patch.setenv("HF_HUB_OFFLINE", "1")
        result = CliRunner().invoke(main, args)
    if result.exit_code != 0:
        crash = result.exc_info if not isinstance(result.exception, SystemExit) else None
        trace = "".join(format_exception(*crash)) if crash else ""
        command = f"medvit-edge {shlex.join(args)}"
        pytest.fail(f"{where}: `{command}` exited {result.exit_code}\n{result.output[-3000:]}{trace}")


def run_shell_block(block: Block, cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for argv in shell_commands(block.code):
        args = medvit_args(argv)
        if block.not_run is not None:
            if args is not None:
                parse_only(args, block.where)
            continue
        if args is not None:
            run_medvit(args, cwd, block.where, monkeypatch)
        elif argv[:2] == ["pip", "install"]:
            check_pip_line(argv, block.where)
        elif argv[0] == "make":
            unknown = set(argv[1:]) - _make_targets()
            assert not unknown, f"{block.where}: make targets {unknown} not in the Makefile"
        else:
            pytest.fail(
                f"{block.where}: `{shlex.join(argv)}` cannot run in the docs test: mark the block "
                "with <!-- not-run: REASON --> on the line above its fence"
            )


def run_python_block(block: Block, cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The block as ``__main__`` in this interpreter (runpy), the page's folder as working
    directory and first on ``sys.path``, as ``python snippet.py`` there would have it: the
    libraries a snippet imports are imported once per suite. The runtime's own promise that it
    imports no torch is tests/test_imports.py's, in fresh interpreters."""
    script = cwd / f"snippet_{block.line}.py"
    script.write_text(block.code + "\n", encoding="utf-8")
    with monkeypatch.context() as patch:
        patch.chdir(cwd)
        patch.syspath_prepend(str(cwd))
        patch.setenv("HF_HUB_OFFLINE", "1")
        try:
            runpy.run_path(script.name, run_name="__main__")
        except SystemExit as stop:
            if stop.code not in (None, 0):
                pytest.fail(f"{block.where}: the Python block exited {stop.code}")
        except Exception as exc:  # any failure of the snippet is the page's bug
            trace = "".join(format_exception(exc))
            pytest.fail(f"{block.where}: the Python block failed\n{trace[-3000:]}")


def test_a_python_block_runs_in_its_folder_and_its_failure_names_the_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "snippet_helper.py").write_text("VALUE = 3\n", encoding="utf-8")
    writes = Block(
        "page.md",
        7,
        "python",
        "from snippet_helper import VALUE\nopen('out.txt', 'w').write(str(VALUE))",
        None,
    )
    run_python_block(writes, tmp_path, monkeypatch)
    assert (tmp_path / "out.txt").read_text() == "3"
    for code in ("raise ValueError('broken snippet')", "import sys\nsys.exit(3)"):
        with pytest.raises(pytest.fail.Exception, match=r"page\.md:7"):
            run_python_block(Block("page.md", 7, "python", code, None), tmp_path, monkeypatch)
    run_python_block(Block("page.md", 9, "python", "import sys\nsys.exit(0)", None), tmp_path, monkeypatch)


def _dicom_folder(images: list[Path], folder: Path) -> None:
    """Scanner-like DICOM files of a few phantom images."""
    import numpy as np
    from PIL import Image

    from .hospital_dicom import write_clinical_us

    folder.mkdir()
    for n, image in enumerate(images, start=1):
        frame = np.asarray(Image.open(image).convert("RGB"))
        write_clinical_us(folder / f"IM{n:06d}", [frame], instance_number=n)


def make_workspace(root: Path, run_dir: Path, phantom_dir: Path, dicom: bool) -> Path:
    """The names the docs use (see the module docstring), in a fresh folder."""
    (root / "models").mkdir(parents=True)
    shutil.copytree(run_dir, root / "models" / "busi", symlinks=True)
    (root / "data").mkdir()
    (root / "data" / "busi").symlink_to(phantom_dir, target_is_directory=True)
    (root / "scans").symlink_to(phantom_dir / "test", target_is_directory=True)
    images = sorted((phantom_dir / "test").rglob("*.png"))
    shutil.copy(images[0], root / "scan.png")
    if dicom:
        _dicom_folder(images[::8][:4], root / "dicom")
    return root


PAGES = sorted({b.page for b in all_blocks()})


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_page_snippets_run(
    page: str, tiny_export: Path, phantom_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every snippet of the page, in order, in one folder holding the names the docs use."""
    blocks = [b for b in all_blocks() if b.page == page]
    dicom = any("dicom/" in b.code for b in blocks if b.not_run is None)
    if dicom:
        pytest.importorskip("pydicom", reason="the page's snippets read DICOM: needs the [dicom] extra")
    workspace = make_workspace(tmp_path / "ws", tiny_export.parent, phantom_dir, dicom)
    for block in blocks:
        if block.language in {"python", "py"}:
            if block.not_run is None:
                run_python_block(block, workspace, monkeypatch)
        else:
            run_shell_block(block, workspace, monkeypatch)
