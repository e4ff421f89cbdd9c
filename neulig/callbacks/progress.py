"""StageProgress: one rich progress bar per trained stage, on stderr.

Every Trainer of a run gets the same callback; each ``fit`` draws one bar named after the module's
``stage_name`` (``finetune/<dataset>``, ``portland``, ``adamerging``, ``wemoe``) over its optimiser
steps (``trainer.estimated_stepping_batches``: for Portland one step is one global epoch), with the
latest train loss and validation accuracy. The finished bar stays on screen as the stage's summary
line. Lightning's own bar stays off. Whether bars are drawn at all is ``neulig.utils.progress``.

Metrics come from ``trainer.progress_bar_metrics`` (what a module logs with ``prog_bar=True``) and,
for modules that evaluate every k epochs, the last point of their ``history``. They are read at most
every ``refresh_s`` seconds, because reading a logged device tensor waits for the device.
"""
from __future__ import annotations

import math
import time

import lightning as L
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Column

# (metric key, label, format, scale): the metrics a bar shows, in this order
SHOWN = (
    ("train/loss", "loss", "{:.3f}", 1.0),
    ("val/acc", "val acc", "{:.1f}%", 100.0),  # torchmetrics accuracy, a fraction
    ("val/ensembled_avg", "val ens", "{:.1f}%", 1.0),  # Portland's history, already in percent
)
DESCRIPTION_WIDTH = 17  # bars of successive stages line up (80 columns hold a whole line)
METRICS_WIDTH = 26  # 'loss 2.309  val acc 100.0%'


def latest_metrics(trainer: L.Trainer, module: L.LightningModule) -> dict[str, float]:
    """The newest finite value of every metric the bar can show."""
    values = {k: float(v) for k, v in trainer.progress_bar_metrics.items()}
    history = getattr(module, "history", None)
    if history:
        values.update({k: float(v) for k, v in history[-1].items() if k != "epoch"})
    return {k: v for k, v in values.items() if math.isfinite(v)}


def describe(values: dict[str, float]) -> str:
    """``loss 0.412  val acc 87.5%``: the shown metrics present in ``values``."""
    return "  ".join(f"{label} {fmt.format(values[key] * scale)}" for key, label, fmt, scale in SHOWN if key in values)


def total_steps(trainer: L.Trainer) -> int | None:
    """The fit's optimiser steps, or None when Lightning cannot tell (an iterable of unknown length)."""
    total = trainer.estimated_stepping_batches
    return int(total) if math.isfinite(total) else None


class StageProgress(L.Callback):
    """A rich bar per ``fit`` on rank zero; ``console`` defaults to stderr."""

    def __init__(self, console: Console | None = None, refresh_s: float = 0.5):
        self.console = console or Console(stderr=True)
        self.refresh_s = refresh_s
        self.progress: Progress | None = None
        self.task = None
        self._last_read = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self.progress = Progress(  # fixed widths: the bar does not jump when the metrics text appears
            TextColumn("{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(),
            TimeRemainingColumn(elapsed_when_finished=True),  # time left while running, time taken once done
            TextColumn("{task.fields[metrics]}", table_column=Column(min_width=METRICS_WIDTH)), console=self.console)
        name = str(getattr(pl_module, "stage_name", type(pl_module).__name__))
        self.task = self.progress.add_task(name.ljust(DESCRIPTION_WIDTH), total=total_steps(trainer), metrics="")
        self.progress.start()
        self._last_read = 0.0  # the first step shows what is known already (Portland's epoch-0 evaluation)

    def refresh(self, trainer: L.Trainer, pl_module: L.LightningModule, force: bool = False) -> None:
        """Update the metrics text, at most every ``refresh_s`` seconds unless ``force``."""
        now = time.monotonic()
        if self.progress is None or (not force and now - self._last_read < self.refresh_s):
            return
        self._last_read = now
        self.progress.update(self.task, metrics=describe(latest_metrics(trainer, pl_module)))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        if self.progress is not None:
            self.progress.advance(self.task)
            self.refresh(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.refresh(trainer, pl_module, force=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.refresh(trainer, pl_module, force=True)
        self.stop()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.stop()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.stop()

    def stop(self) -> None:
        """Leave the finished bar on screen and release the terminal (idempotent)."""
        if self.progress is not None:
            self.progress.stop()
            self.progress, self.task = None, None


def progress_callbacks(mode: object) -> list[L.Callback]:
    """``[StageProgress()]`` when this process should draw bars for ``mode`` (auto/on/off), else ``[]``."""
    from neulig.utils.progress import progress_enabled

    return [StageProgress()] if progress_enabled(mode) else []
