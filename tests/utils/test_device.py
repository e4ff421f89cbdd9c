"""trainer=auto resolves to the GPU (bf16-mixed) when CUDA has one, else the CPU (32-true); the run's
first lines say which, and warn about a real backbone on the CPU or an unused GPU."""
from __future__ import annotations

import pytest
import torch

from neulig.config.trainer import TrainerConfig
from neulig.utils.device import device_lines


def config(*overrides: str):
    from neulig.config import load
    from tests.conftest import compose

    return load(compose(list(overrides), "/nonexistent"))


@pytest.fixture
def fake_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100")


def test_auto_is_the_default_and_resolves_to_the_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    trainer = config().trainer
    assert (trainer.accelerator, trainer.precision) == ("auto", "auto")
    assert trainer.kwargs()["accelerator"] == "cpu" and trainer.kwargs()["precision"] == "32-true"
    assert device_lines(config()) == [f"device: cpu ({torch.get_num_threads()} threads, 1 process(es)), precision 32-true "
                                      "(trainer.accelerator=auto, trainer.precision=auto)"]


def test_auto_takes_the_gpu_in_bf16(fake_gpu):
    trainer = TrainerConfig(accelerator="auto", devices=1, precision="auto")
    assert trainer.kwargs()["accelerator"] == "gpu" and trainer.kwargs()["precision"] == "bf16-mixed"
    lines = device_lines(config("model=vit_b32"))
    assert lines == ["device: cuda (NVIDIA H100, 1 device(s)), precision bf16-mixed (trainer.accelerator=auto, "
                     "trainer.precision=auto)"]


def test_a_gpu_left_unused_and_a_real_backbone_on_the_cpu_are_warned_about(fake_gpu):
    lines = device_lines(config("model=vit_b32", "trainer=cpu", "data.sizes.train=1000"))
    assert lines[0].startswith("device: cpu") and "precision 32-true" in lines[0]
    assert lines[1].startswith("warning: a GPU (NVIDIA H100) is present but unused (trainer.accelerator=cpu)")
    assert lines[2].startswith("warning: ViT-B-32-quickgelu runs on the CPU (") and ", and features about " in lines[2]
    assert "estimate: 4.4 GFLOPs per image" in lines[2]


def test_explicit_precision_is_kept():
    assert TrainerConfig(accelerator="cpu", devices=1, precision="bf16-mixed").resolved_precision() == "bf16-mixed"
    assert TrainerConfig(accelerator="cpu", devices=1).resolved_precision() == "32-true"  # Lightning's default
