"""Schema of ``conf/trainer/``: the Lightning Trainer settings every trained stage uses."""
from dataclasses import dataclass
from typing import Optional

from omegaconf import MISSING

from neulig.config.fields import option, positive

ACCELERATORS = ("cpu", "gpu", "cuda", "auto")
STRATEGIES = ("auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true")
PRECISIONS = ("auto", "32-true", "16-mixed", "bf16-mixed", "bf16-true", "16-true", "64-true")


@dataclass
class TrainerConfig:
    """Keyword arguments of ``lightning.Trainer`` (null: Lightning's default)."""

    accelerator: str = option(MISSING, choices=ACCELERATORS)
    devices: int = positive()
    strategy: Optional[str] = option(None, choices=(None, *STRATEGIES))
    # auto: bf16-mixed on a GPU that has bfloat16 (16-mixed on an older one), 32-true on the CPU
    precision: Optional[str] = option(None, choices=(None, *PRECISIONS))
    enable_progress_bar: bool = False  # Lightning's bar; neulig draws its own (`progress`)
    deterministic: bool = False

    def device(self):
        """The torch device evaluations and feature extraction run on: CUDA when asked for and present."""
        import torch

        if self.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")

    def resolved_accelerator(self) -> str:
        """``cpu`` or ``gpu``: ``auto`` is the GPU when CUDA has one (never another backend, as :meth:`device`)."""
        return "gpu" if self.device().type == "cuda" else "cpu"

    def resolved_precision(self) -> str:
        """The precision the run trains in: ``auto`` resolved for the device, null as Lightning's 32-true."""
        if self.precision != "auto":
            return self.precision or "32-true"
        if self.device().type != "cuda":
            return "32-true"
        import torch

        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"

    def kwargs(self) -> dict:
        """The Trainer arguments this config sets, ``auto`` accelerator and precision resolved."""
        out = {k: v for k, v in vars(self).items() if v is not None}
        if self.accelerator == "auto":
            out["accelerator"] = self.resolved_accelerator()
        if self.precision == "auto":
            out["precision"] = self.resolved_precision()
        return out
