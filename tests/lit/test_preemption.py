"""Preemption-safe fine-tuning: the shuffle is the DataLoader's own, and a SIGTERM'd fit resumes exactly."""
from __future__ import annotations

import os
import signal
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from neulig.config.model import FinetuneConfig
from neulig.config.trainer import TrainerConfig
from neulig.data.loaders import loader
from neulig.lit.preemption import ResumableSampler

pytestmark = pytest.mark.usefixtures("one_thread")


def _batches(data_loader) -> list[list[int]]:
    return [batch[0].flatten().tolist() for batch in data_loader]


def test_the_sampler_draws_the_shuffle_of_a_seeded_dataloader_and_resumes_mid_epoch():
    data = TensorDataset(torch.arange(10))
    plain = DataLoader(data, batch_size=3, shuffle=True, generator=torch.Generator().manual_seed(7))
    sampler = ResumableSampler(10, torch.Generator().manual_seed(7))
    ours = loader(data, 3, sampler=sampler)
    expected = [_batches(plain) for _ in range(3)]
    got, starts = [], []
    for _ in range(3):
        got.append(_batches(ours))
        starts.append(sampler.epoch_state)
    assert got == expected  # an uninterrupted run trains on the same batches as before
    # epoch 1, two batches trained: the resumed loader gives the rest of epoch 1, then epochs 2, ...
    resumed = loader(data, 3, sampler=ResumableSampler(10, torch.Generator().manual_seed(99), starts[1], skip=6))
    assert _batches(resumed) == expected[1][2:] and _batches(resumed) == expected[2]


def test_next_epoch_state_is_where_the_next_epoch_starts():
    sampler = ResumableSampler(10, torch.Generator().manual_seed(3))
    ours = loader(TensorDataset(torch.arange(10)), 4, sampler=sampler)
    _batches(ours)
    ahead = sampler.next_epoch_state()
    _batches(ours)
    assert torch.equal(ahead, sampler.epoch_state)


class Preempted(Exception):
    pass


class SigtermAt(L.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives in the middle of this step


def _finetune(scratch, callbacks=()):
    from neulig.stages.experts import finetune

    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.Dropout(0.2), nn.Linear(6, 6))  # dropout: global RNG
    backbone = SimpleNamespace(name="toy", visual=encoder)
    x, y = torch.randn(50, 12), torch.arange(50) % 3
    dataset = SimpleNamespace(name="toy", train=TensorDataset(x, y), val=TensorDataset(x[:10], y[:10]))
    recipe = FinetuneConfig(epochs=2, batch_size=8, lr=1e-2, weight_decay=0.1, warmup_steps=3, grad_clip=1.0,
                            num_workers=0)
    state, _ = finetune(backbone, dataset, torch.randn(3, 6), recipe, TrainerConfig(accelerator="cpu", devices=1), 0,
                        list(callbacks), 16, scratch=scratch)
    return state


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    scratch = tmp_path_factory.mktemp("whole") / "scratch"
    state = _finetune(scratch)
    assert not scratch.exists()  # nothing kept once finished
    return state


@pytest.mark.parametrize("step", [9, 6])  # mid-epoch, and the last step of an epoch (7 steps each, 14 in all)
def test_a_sigtermed_fine_tuning_resumes_to_the_same_weights(tmp_path, whole, step):
    def preempted(signum, frame):
        raise Preempted

    previous = signal.signal(signal.SIGTERM, preempted)  # the process's own handler gets the signal afterwards
    try:
        with pytest.raises(Preempted):
            _finetune(tmp_path / "cut", [SigtermAt(step)])
    finally:
        signal.signal(signal.SIGTERM, previous)
    saved = torch.load(tmp_path / "cut" / "state.pt", weights_only=True)
    assert saved["step"] == step + 1 and set(saved) >= {"encoder", "optimizer", "scheduler", "rng", "sampler"}
    resumed = _finetune(tmp_path / "cut")
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert not (tmp_path / "cut").exists()
