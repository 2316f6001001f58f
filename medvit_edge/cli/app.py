"""``medvit-edge``: thin click adapters that build a config and call the library.

Nothing heavy is imported at module level: each command imports its stage when it runs, and
if the stage's extra is missing it prints the ``pip install`` line that fixes it. Choices come
from the configs' ``Literal`` aliases and defaults from their fields (medvit_edge.options), so
each is written once.

Every command keeps one exit-code contract (medvit_edge.errors): 0 done, 1 some inputs or
variants failed, 2 the model, data or arguments are unusable. A user's mistake is one line on
stderr; a traceback only with ``--debug`` (or for a real bug).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from medvit_edge.cli import benchmark, reports, run, serve, stages
from medvit_edge.errors import EXIT_INTERRUPTED, EXIT_UNUSABLE, UserError, printable
from medvit_edge.progress import set_quiet


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("medvit-edge")
    except PackageNotFoundError:
        return "unknown"


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (click's test runner swaps it), with
    control characters escaped: messages carry file names."""

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        sys.stderr.write("\n".join(printable(line) for line in text.split("\n")) + "\n")
        sys.stderr.flush()


def configure_logging(verbose: int, quiet: bool) -> None:
    """medvit-edge's loggers print their messages on stderr: INFO by default, WARNING with -q,
    DEBUG with -v."""
    logger = logging.getLogger("medvit_edge")
    logger.handlers = [h for h in logger.handlers if not isinstance(h, _StderrHandler)]
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


class _Commands(click.Group):
    """A user's mistake (``UserError``, or an OS error such as a missing or unwritable file)
    becomes one line and its exit code; anything else is a bug and keeps its traceback. Ctrl-C
    (SIGINT) exits 130, the shell's code for it, never 1 ("some inputs failed")."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            # the reader went away (`infer ... | head`): stop quietly with 0, as Unix tools do
            _silence_stdout()
            ctx.exit(0)
        except KeyboardInterrupt:
            click.echo("Interrupted: nothing more was written", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except (UserError, OSError) as exc:
            if ctx.params.get("debug"):
                raise
            click.echo(f"Error: {printable(exc)}", err=True)
            ctx.exit(getattr(exc, "exit_code", EXIT_UNUSABLE))


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush does not fail again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (a test runner's stream)
        pass


@click.group(
    cls=_Commands, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(_version(), prog_name="medvit-edge")
@click.option("-v", "--verbose", count=True, help="More detail on stderr.")
@click.option(
    "-q", "--quiet", "quiet_logs", is_flag=True, help="Only warnings and errors on stderr (no progress)."
)
@click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
def main(verbose: int, quiet_logs: bool, debug: bool) -> None:
    """Fine-tune a ViT on medical images, export it to ONNX (fp32/fp16/int8) and run it on
    edge devices without torch.

    \b
    Typical flow:
      medvit-edge train --model google/vit-large-patch16-224 --output models/busi
      medvit-edge export models/busi --fp16 --int8
      medvit-edge infer models/busi scans/ --output preds.csv
      medvit-edge evaluate models/busi
    Try it offline first: medvit-edge demo

    \b
    Exit codes (every command): 0 done; 1 some inputs or variants failed;
    2 the model, data or arguments cannot be used (one line says why).
    """
    configure_logging(verbose, quiet_logs)
    set_quiet(quiet_logs)


for command in (
    stages.train,
    stages.export,
    run.infer,
    reports.evaluate,
    run.info,
    run.check,
    benchmark.benchmark,
    reports.demo,
    serve.serve_dicom,
):
    main.add_command(command)


if __name__ == "__main__":
    main()
