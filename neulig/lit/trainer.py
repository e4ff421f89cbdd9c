"""Building Lightning Trainers from the ``trainer`` group (a typed config, never a DictConfig)."""
from __future__ import annotations

import warnings

import lightning as L

from neulig.config.trainer import TrainerConfig
from neulig.utils.log import quiet_lightning


def trainer_kwargs(trainer: TrainerConfig) -> dict:
    """Lightning Trainer arguments of the ``trainer`` group, plus neulig's quiet defaults."""
    quiet_lightning()  # every Trainer is built from these kwargs, after lightning has been imported
    return {"logger": False, "enable_checkpointing": False, "enable_model_summary": False, **trainer.kwargs()}


def fit_steps(module: L.LightningModule, steps: int, trainer: TrainerConfig, callbacks: list) -> None:
    """Fit a module whose training loop is ``steps`` Lightning steps (one per optimisation step, batches
    drawn inside the step): one epoch, no sanity check, no Lightning bar."""
    kwargs = trainer_kwargs(trainer)
    kwargs.update(max_steps=int(steps), max_epochs=1, use_distributed_sampler=False, num_sanity_val_steps=0,
                  enable_progress_bar=False)
    with warnings.catch_warnings():  # by design: a frozen encoder in eval mode, batches drawn in the step
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
        L.Trainer(callbacks=list(callbacks), **kwargs).fit(module)
