"""Progress bars: when they are drawn (progress: auto|on|off) and what a finished bar shows."""
import io
import re

import pytest
import torch

from neulig.errors import NeuligError
from neulig.utils.progress import progress_enabled, progress_mode


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("value, mode", [("auto", "auto"), ("on", "on"), ("off", "off"), (True, "on"), (False, "off")])
def test_modes_including_yaml_booleans(value, mode):
    assert progress_mode(value) == mode


def test_unknown_mode_names_the_choices():
    with pytest.raises(NeuligError, match=r"progress='sometimes' is not a progress mode; choose one of auto, on, off"):
        progress_mode("sometimes")


@pytest.mark.parametrize("stream, env, expected", [
    (Terminal(), {}, True),
    (io.StringIO(), {}, False),  # a pipe or a file: logs stay clean
    (Terminal(), {"PYTEST_CURRENT_TEST": "t"}, False),
    (Terminal(), {"CI": "true"}, False),
    (Terminal(), {"CI": "false"}, True),
])
def test_auto_draws_only_for_a_person_at_a_terminal(stream, env, expected, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert progress_enabled("auto", stream, env) is expected


def test_on_and_off_override_auto_but_never_on_a_ddp_child(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert progress_enabled("on", io.StringIO(), {"CI": "1"}) is True
    assert progress_enabled("off", Terminal(), {}) is False
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert progress_enabled("on", Terminal(), {}) is False
    assert progress_enabled("auto", Terminal(), {}) is False


def fit_with_bar(module, **trainer_kwargs) -> str:
    import lightning as L
    from rich.console import Console

    from neulig.callbacks.progress import StageProgress

    out = io.StringIO()
    bar = StageProgress(console=Console(file=out, width=120, force_terminal=True, color_system=None))
    trainer = L.Trainer(callbacks=[bar], logger=False, enable_checkpointing=False, enable_model_summary=False,
                        enable_progress_bar=False, accelerator="cpu", **trainer_kwargs)
    trainer.fit(module)
    assert bar.progress is None  # stopped: the terminal is released
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())  # cursor and line controls
    return [part for part in re.split(r"[\r\n]", screen) if part.strip()][-1]  # the finished bar as it stays


def test_portland_bar_counts_global_epochs_and_shows_loss_and_val_ensembled_accuracy():
    import dataclasses

    from neulig.portland.features import StackedSources
    from neulig.portland.statistics import offset_statistics
    from neulig.portland.training import ComboInputs, PortlandTraining
    from tests.portland.test_training import METHOD

    torch.manual_seed(0)
    names, t, d, c = ["a", "b"], 2, 8, 3
    sets = StackedSources([[(torch.randn(40, t, d), torch.randint(0, c, (40,))) for _ in names]])
    stats = offset_statistics([{"w": torch.randn(5)} for _ in names])
    combo = ComboInputs(tuple(names), tuple(torch.randn(c, d) for _ in names), stats)
    module = PortlandTraining([combo], sets, sets, dataclasses.replace(METHOD, regularizer="exact", eval_every=2), 0,
                              "features")
    final = fit_with_bar(module, max_epochs=6, num_sanity_val_steps=0)
    assert final.startswith("portland ") and " 6/6 " in final, final
    loss, val = module.history[-1]["train/loss"], module.history[-1]["val/ensembled_avg"]
    assert f"loss {loss:.3f}" in final and f"val ens {val:.1f}%" in final, final


def test_finetune_bar_names_the_dataset_and_shows_loss_and_val_accuracy():
    from torch.utils.data import DataLoader, TensorDataset

    from neulig.lit.finetune import FinetuneModule

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(24, 4), torch.randint(0, 2, (24,)))
    module = FinetuneModule(torch.nn.Linear(4, 3), torch.randn(2, 3), lr=1e-3, weight_decay=0.0, warmup_steps=1,
                            total_steps=6, stage_name="finetune/toy")
    module.train_dataloader = lambda: DataLoader(data, batch_size=8)
    module.val_dataloader = lambda: DataLoader(data, batch_size=8)
    final = fit_with_bar(module, max_epochs=2, num_sanity_val_steps=0)
    assert final.startswith("finetune/toy ") and " 6/6 " in final, final
    assert "loss " in final and "val acc " in final and final.rstrip().endswith("%"), final
