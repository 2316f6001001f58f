"""Trainer pieces: a one-line-per-epoch progress report, precision flags (the losses are in
``regularisation``)."""

from __future__ import annotations

import sys
from typing import Any

import torch
from transformers import TrainerCallback


def precision_flags(precision: str) -> dict[str, bool]:
    """``auto``: bf16 on GPUs that have it, else fp16 on CUDA, else fp32 (CPU)."""
    if precision == "auto":
        if torch.cuda.is_available():
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "fp32"
    if precision in ("bf16", "fp16") and not torch.cuda.is_available():
        raise ValueError(f"--precision {precision} needs a CUDA GPU; use fp32 on CPU")
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True  # Ampere+: TF32 for the fp32 remainder
        torch.backends.cudnn.allow_tf32 = True
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


class ProgressCallback(TrainerCallback):
    """A step bar on stderr, and one line per evaluation: epoch, train loss, the chosen metric and
    the best so far. Replaces the Trainer's own printer, which dumps raw log dicts to stdout."""

    def __init__(self, metric: str, enabled: bool = True):
        self.metric = metric if metric.startswith("eval_") else f"eval_{metric}"
        self.enabled = enabled
        self.best: float | None = None
        self.bar: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        from tqdm.auto import tqdm

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
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any
    ) -> None:
        if self.bar is not None and logs and "loss" in logs:
            self.bar.set_postfix(loss=f"{logs['loss']:.4f}", epoch=f"{state.epoch:.1f}")

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **kwargs: Any
    ) -> None:
        if not state.is_world_process_zero:
            return  # one line per evaluation, not one per process
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
