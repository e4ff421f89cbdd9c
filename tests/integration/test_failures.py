"""Failure handling: corrupt caches are rebuilt, NaN losses stop with the step, runs are deterministic."""
import json
from pathlib import Path

import pytest
import torch

from neulig.errors import NeuligError
from tests.conftest import assert_cache_clean, execute


def _run(cfg, run_dir: Path) -> dict:
    return execute(cfg, run_dir)


def test_same_seed_same_metrics_and_corrupt_expert_is_retrained(tiny_cfg, tmp_path):
    cfg = tiny_cfg("merge=average", "logger=none")
    first = _run(cfg, tmp_path / "a")["metrics"]
    experts = sorted((Path(cfg.paths.cache_dir) / "experts").iterdir())
    victim = experts[0] / "encoder.safetensors"
    victim.write_bytes(victim.read_bytes()[:100])  # a kill in the middle of a write, or disk damage
    wrong = experts[1]
    from safetensors.torch import save_file

    from neulig.utils.cache import file_sha256
    save_file({"not.a.key": torch.zeros(1)}, str(wrong / "encoder.safetensors"))  # bytes valid, layout wrong
    meta = json.loads((wrong / "meta.json").read_text())
    meta["files"]["encoder.safetensors"] = file_sha256(wrong / "encoder.safetensors")
    (wrong / "meta.json").write_text(json.dumps(meta))

    second = _run(cfg, tmp_path / "b")["metrics"]
    assert second == first  # both experts rebuilt identically: same seed, same numbers
    assert (experts[0] / "encoder.safetensors").stat().st_size > 100
    assert_cache_clean(Path(cfg.paths.cache_dir))  # the rebuilt entries verify, no temp dir is left


def test_nan_loss_stops_with_the_step_and_value():
    from neulig.lit.finetune import FinetuneModule

    module = FinetuneModule(torch.nn.Linear(4, 3), torch.randn(2, 3), lr=1e-3, weight_decay=0.0,
                            warmup_steps=1, total_steps=10)
    batch = (torch.full((2, 4), float("nan")), torch.tensor([0, 1]))
    with pytest.raises(NeuligError, match=r"fine-tuning loss is nan at step 0"):
        module.training_step(batch, 0)
