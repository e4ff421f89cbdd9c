"""Schema of ``conf/trainer/``: the Lightning Trainer settings every trained stage uses."""
from dataclasses import dataclass
from typing import Optional

from omegaconf import MISSING

from neulig.config.fields import option, positive

ACCELERATORS = ("cpu", "gpu", "cuda", "auto")
STRATEGIES = ("auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true")
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "bf16-true", "16-true", "64-true")


@dataclass
class TrainerConfig:
    """Keyword arguments of ``lightning.Trainer`` (null: Lightning's default)."""

    accelerator: str = option(MISSING, choices=ACCELERATORS)
    devices: int = positive()
    strategy: Optional[str] = option(None, choices=(None, *STRATEGIES))
    precision: Optional[str] = option(None, choices=(None, *PRECISIONS))
    enable_progress_bar: bool = False  # Lightning's bar; neulig draws its own (`progress`)
    deterministic: bool = False

    def device(self):
        """The torch device evaluations and feature extraction run on: CUDA when asked for and present."""
        import torch

        if self.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")

    def kwargs(self) -> dict:
        """The Trainer arguments this config sets."""
        return {k: v for k, v in vars(self).items() if v is not None}
