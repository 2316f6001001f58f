"""Trainer pieces: a one-line-per-epoch progress report, precision flags (the losses are in
``regularisation``)."""

from __future__ import annotations

import sys
from typing import Any

import torch
from transformers import TrainerCallback

from medvit_edge.progress import quiet


def precision_flags(precision: str, cuda: bool | None = None) -> dict[str, bool]:
    """``auto``: bf16 on GPUs that have it, else fp16 on CUDA, else fp32 (CPU); ``cuda=False``:
    training runs on the CPU although a GPU is there (``--device cpu``)."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if precision == "auto":
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "fp32"
    if precision in ("bf16", "fp16") and not cuda:
        raise ValueError(f"--precision {precision} needs a CUDA GPU; use fp32 on CPU")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True  # Ampere+: TF32 for the fp32 remainder
        torch.backends.cudnn.allow_tf32 = True
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


class ProgressCallback(TrainerCallback):
    """A step bar on stderr (steps, ETA, current loss), and one line per evaluation: epoch, train
    loss, the chosen metric and the best so far. Off a terminal (logs, CI) a step line every
    ``every_s`` seconds replaces the bar. Replaces the Trainer's own printer, which dumps raw log
    dicts to stdout."""

    def __init__(self, metric: str, enabled: bool = True, every_s: float = 30.0):
        self.metric = metric if metric.startswith("eval_") else f"eval_{metric}"
        self.enabled = enabled
        self.best: float | None = None
        self.bar: Any = None
        self.every_s = every_s
        self.loss: float | None = None
        self.started = self.last_line = 0.0
        self.first_step = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        import time

        from tqdm.auto import tqdm

        # resumed: the best so far is the checkpoint's, as metrics.json will say
        self.best = state.best_metric if state.best_metric is not None else self.best
        self.started = self.last_line = time.monotonic()
        self.first_step = state.global_step

        self.bar = tqdm(
            total=state.max_steps,
            initial=state.global_step,
            file=sys.stderr,
            unit="step",
            # the bar only on a terminal, and from one process of a distributed run; logs (CI,
            # nohup) get the per-epoch lines alone
            disable=not (self.enabled and sys.stderr.isatty() and state.is_world_process_zero),
            dynamic_ncols=True,
            leave=False,
        )

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        import time

        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)
        now = time.monotonic()
        plain = self.enabled and state.is_world_process_zero and (self.bar is None or self.bar.disable)
        if plain and now - self.last_line >= self.every_s:
            self.last_line = now
            print(self._step_line(state, now), file=sys.stderr, flush=True)

    def _step_line(self, state: Any, now: float) -> str:
        done = state.global_step - self.first_step
        per_step = (now - self.started) / max(done, 1)
        left = per_step * (state.max_steps - state.global_step)
        loss = f", loss {self.loss:.4f}" if self.loss is not None else ""
        return (
            f"step {state.global_step}/{state.max_steps} ({state.global_step / max(state.max_steps, 1):.0%})"
            f", epoch {state.epoch:.2f}{loss}, {per_step:.2f} s/step, about {_minutes(left)} left"
        )

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any
    ) -> None:
        if logs and "loss" in logs:
            self.loss = float(logs["loss"])
        if self.bar is not None and logs and "loss" in logs:
            self.bar.set_postfix(loss=f"{logs['loss']:.4f}", epoch=f"{state.epoch:.1f}")

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **kwargs: Any
    ) -> None:
        if not state.is_world_process_zero or quiet():
            return  # one line per evaluation, not one per process; none with -q
        metrics = metrics or {}
        losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
        value = metrics.get(self.metric)
        if value is not None:
            lower_is_better = "loss" in self.metric
            better = self.best is None or (value < self.best if lower_is_better else value > self.best)
            self.best = value if better else self.best
        epoch = f"{state.epoch:.2f}".rstrip("0").rstrip(".")
        train_loss = f"{losses[-1]:.4f}" if losses else "n/a"
        shown = f"{value:.4f}" if value is not None else "n/a"
        best = f"{self.best:.4f}" if self.best is not None else "n/a"
        line = (
            f"epoch {epoch}/{args.num_train_epochs:g}  train loss {train_loss}  "
            f"val loss {metrics.get('eval_loss', float('nan')):.4f}  "
            f"{self.metric.removeprefix('eval_')} {shown} (best {best})"
        )
        if self.bar is not None and self.enabled:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.close()


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"
