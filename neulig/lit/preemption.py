"""Preemption-safe fine-tuning: a SIGTERM (what Slurm sends a preempted job) saves the training state at
the next step boundary in the cache's scratch area, and the rerun resumes from it to the same expert.

The state (``<cache>/scratch/experts/<key>/state.pt``, read back with ``torch.load(weights_only=True)``):
the encoder, AdamW's and the scheduler's state dicts, the epoch and the batches of it already trained,
the shuffling generator's state at that epoch's start, and the torch / CUDA / NumPy / Python RNG states.
The shuffle is the one ``DataLoader(shuffle=True, generator=...)`` draws (:class:`ResumableSampler`
wraps the same ``RandomSampler``), so an uninterrupted run's batches do not change; a resumed run
replays the interrupted epoch's permutation and skips the batches already trained. Lightning's own
SIGTERM handling ends the step (optimiser and scheduler stepped) before :class:`Preemption` saves;
the signal is then passed on to the handler the process had (the default one ends it).
"""
from __future__ import annotations

import itertools
import random
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import lightning as L
import numpy as np
import torch
from torch.utils.data import RandomSampler, Sampler

STATE_FILE = "state.pt"


class ResumableSampler(Sampler[int]):
    """``RandomSampler(generator=generator)`` that remembers the generator's state at each epoch's start
    and can start its first epoch from a saved state, skipping the samples already trained on."""

    def __init__(self, n: int, generator: torch.Generator, start_state: torch.Tensor | None = None, skip: int = 0):
        self.inner = RandomSampler(range(n), generator=generator)
        self.generator, self.start_state, self.skip = generator, start_state, skip
        self.epoch_state: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[int]:
        if self.start_state is not None:
            self.generator.set_state(self.start_state)
            self.start_state = None
        self.epoch_state = self.generator.get_state()
        skip, self.skip = self.skip, 0
        return itertools.islice(iter(self.inner), skip, None)

    def next_epoch_state(self) -> torch.Tensor:
        """The generator's state where the next epoch's permutation starts: after the draw the next
        DataLoader iterator makes for its workers' base seed."""
        ahead = torch.Generator()
        ahead.set_state(self.generator.get_state())
        torch.empty((), dtype=torch.int64).random_(generator=ahead)
        return ahead.get_state()


def rng_state() -> dict:
    numpy = np.random.get_state()
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [numpy[0], torch.from_numpy(numpy[1].astype(np.int64)), *numpy[2:]], "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))


def load_state(scratch: Path) -> dict | None:
    """The saved state in ``scratch``, or None (absent, or unreadable: then fine-tuning starts over)."""
    path = Path(scratch) / STATE_FILE
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a torn or foreign file only costs a restart
        from neulig.utils.log import log

        log.warning(f"{path}: unreadable saved fine-tuning state ({type(err).__name__}); starting over")
        return None


class Preemption(L.Callback):
    """Restores a saved state when the fit starts; saves it when Lightning stops the fit for a SIGTERM."""

    def __init__(self, scratch: Path, sampler: ResumableSampler, batch_size: int, resume: dict | None):
        self.scratch, self.sampler, self.batch_size, self.resume = Path(scratch), sampler, batch_size, resume
        self.epoch0 = resume["epoch"] if resume else 0  # the epoch this fit's first epoch is
        self.skipped = resume["batches"] if resume else 0  # batches of that epoch trained before
        self.position = (self.epoch0, self.skipped)  # (epoch, batches of it trained) so far
        self.sigterm = False

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.resume is None:
            return
        trainer.optimizers[0].load_state_dict(self.resume["optimizer"])
        trainer.lr_scheduler_configs[0].scheduler.load_state_dict(self.resume["scheduler"])
        set_rng_state(self.resume["rng"])

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx: int) -> None:
        epoch = self.epoch0 + trainer.current_epoch
        self.position = (epoch, batch_idx + 1 + (self.skipped if epoch == self.epoch0 else 0))

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(exception, SIGTERMException):
            self.sigterm = True
            self.save(trainer, module)

    def save(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        from neulig.utils.cache import atomic_file

        if self.sampler.epoch_state is None:  # stopped before its first training batch: nothing new to keep
            return
        epoch, batches = self.position
        state = self.sampler.epoch_state
        if batches >= len(self.sampler) // self.batch_size + bool(len(self.sampler) % self.batch_size):
            epoch, batches, state = epoch + 1, 0, self.sampler.next_epoch_state()  # stopped at an epoch's end
        record = {"encoder": {k: v.detach().cpu() for k, v in module.encoder.state_dict().items()},
                  "optimizer": trainer.optimizers[0].state_dict(),
                  "scheduler": trainer.lr_scheduler_configs[0].scheduler.state_dict(),
                  "epoch": epoch, "batches": batches, "step": self.resume_step + trainer.global_step,
                  "sampler": state, "rng": rng_state()}
        with atomic_file(self.scratch / STATE_FILE) as tmp:
            torch.save(record, tmp)

    @property
    def resume_step(self) -> int:
        return self.resume["step"] if self.resume else 0


@contextmanager
def deferred_sigterm() -> Iterator[list]:
    """Within the block a SIGTERM only records itself (Lightning, which adds its own handler, stops at the
    step's end); after the block it is passed on to the process's handler. Yields the record."""
    received: list = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)
    if received:
        signal.raise_signal(signal.SIGTERM)
        raise SystemExit(128 + signal.SIGTERM)  # the handler returned (SIG_IGN, or one that does not exit)
