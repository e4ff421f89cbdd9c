"""The expert cache key follows what changes an expert's numbers: the device kind and the precision
(trainer=auto on the CPU is trainer=cpu; bf16-mixed is another expert), never the speed knobs."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from neulig.config.trainer import TrainerConfig
from neulig.stages import experts
from neulig.stages.backbone import load_backbone
from tests.methods.toys import model_config


def test_precision_and_device_are_in_the_key_speed_knobs_are_not(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = model_config("tiny", "model.pretrained=null")
    backbone = load_backbone(model, str(tmp_path), tmp_path)
    trained = []

    def fake_finetune(backbone, dataset, head, recipe, trainer, seed, callbacks, eval_batch_size, scratch=None):
        trained.append(trainer.resolved_precision())
        return {k: v.clone() for k, v in backbone.visual.state_dict().items()}, {"dataset": dataset.name}

    monkeypatch.setattr(experts, "finetune", fake_finetune)
    dataset = SimpleNamespace(name="digits")

    def key(trainer: TrainerConfig, recipe=model.finetune) -> str:
        return experts.finetune_expert(backbone, dataset, torch.zeros(1), {"d": 1}, recipe, trainer, 0, tmp_path, [],
                                       eval_batch_size=64).key

    cpu = key(TrainerConfig(accelerator="cpu", devices=1))
    assert key(TrainerConfig(accelerator="auto", devices=1, precision="auto")) == cpu  # the same run on a CPU
    assert key(TrainerConfig(accelerator="cpu", devices=1, precision="32-true")) == cpu
    from dataclasses import replace

    assert key(TrainerConfig(accelerator="cpu", devices=1), replace(model.finetune, compile=True)) == cpu
    assert trained == ["32-true"]  # trained once, then read from the cache
    assert key(TrainerConfig(accelerator="cpu", devices=1, precision="bf16-mixed")) != cpu
    assert trained == ["32-true", "bf16-mixed"]
