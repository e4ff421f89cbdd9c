"""The closing lines of a run name it, its files, its MLflow store and the command that shows the store."""
from pathlib import Path

from neulig.run import CONF_DIR, file_list, summary_lines, ui_command

REPO = CONF_DIR.parent


def test_project_store_is_make_ui_from_the_repo_and_make_c_from_elsewhere(tmp_path):
    assert ui_command("sqlite:///./outputs/mlflow.db", cwd=REPO) == "make ui"
    assert ui_command(f"sqlite:///{REPO}/outputs/mlflow.db", cwd=tmp_path) == f"make -C {REPO} ui"


def test_other_stores_name_themselves(tmp_path):
    assert ui_command("sqlite:///outputs/mlflow.db", cwd=tmp_path) == \
        f"mlflow ui --backend-store-uri sqlite:///{tmp_path.resolve()}/outputs/mlflow.db"
    assert ui_command("http://127.0.0.1:5000") == "open http://127.0.0.1:5000"
    assert ui_command("postgresql://db/mlflow") == "mlflow ui --backend-store-uri postgresql://db/mlflow"


def test_folders_are_counted_not_listed():
    names = ["results.json", "merged_global.safetensors", "merged_task/a.safetensors", "merged_task/b.safetensors"]
    assert file_list(names) == "results.json, merged_global.safetensors, merged_task/ (2 files)"


def test_summary_with_and_without_mlflow(tmp_path):
    from neulig.config.logger import LoggerConfig

    logger = LoggerConfig(enabled=True, experiment_name="neulig-x", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    lines = summary_lines("average-x-tiny-s0", tmp_path / "run", ["results.json"], logger)
    assert lines == [
        "run:     average-x-tiny-s0",
        f"files:   {(tmp_path / 'run').resolve()}/  (results.json)",
        f"MLflow:  experiment 'neulig-x' in sqlite:///{tmp_path}/mlflow.db",
        f"view:    mlflow ui --backend-store-uri sqlite:///{tmp_path.resolve()}/mlflow.db",
    ]
    assert summary_lines("r", Path("run"), [], LoggerConfig(enabled=False))[-1] == "MLflow:  off (logger=none)"


def state_of_the_process() -> dict:
    """What one sweep job could leave behind for the next one in the same process."""
    import os
    import random
    import signal
    import warnings

    import numpy as np
    import torch

    return {"env": {k: v for k, v in os.environ.items() if k.startswith(("NEULIG_", "MLFLOW_", "PL_"))},
            "torch_rng": torch.get_rng_state().tolist(), "random": random.getstate(),
            "numpy": [a.tolist() if hasattr(a, "tolist") else a for a in np.random.get_state()],
            "warning_filters": list(warnings.filters),
            "handlers": [getattr(h, "__qualname__", h) for h in map(signal.getsignal, (signal.SIGINT, signal.SIGTERM))],
            "optimizer": dict(vars(torch.optim.Optimizer)), "adam": dict(vars(torch.optim.Adam))}


def test_two_sweep_jobs_in_one_process_share_no_state(tmp_path, monkeypatch):
    """A Hydra multirun with the basic launcher runs both jobs in this process: the second starts from the
    state the first started from (environment, random generators, warning filters, signal handlers,
    torch's classes), and the process is left as it was found."""
    import sys

    from hydra.core.global_hydra import GlobalHydra

    import neulig.run
    from tests.conftest import FAST_RUN

    monkeypatch.delenv("NEULIG_RUN_DIR", raising=False)
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    seen, real_execute = [], neulig.run.execute

    def spy(config, config_yaml, run_dir):
        seen.append((run_dir, state_of_the_process()))
        return real_execute(config, config_yaml, run_dir)

    monkeypatch.setattr(neulig.run, "execute", spy)
    args = [a for a in FAST_RUN if a != "logger=none"]
    monkeypatch.setattr(sys, "argv", ["neulig.run", "-m", f"paths.root_dir={tmp_path}", *args,
                                      "merge=average,task_arithmetic", "hydra/launcher=basic"])
    before = state_of_the_process()
    try:
        neulig.run.main()
    finally:
        GlobalHydra.instance().clear()
    after = state_of_the_process()

    (first_dir, first), (second_dir, second) = seen
    assert first_dir != second_dir
    assert first["env"].pop("NEULIG_RUN_DIR") == str(first_dir)  # set for the job (a DDP child reuses it)...
    assert second["env"].pop("NEULIG_RUN_DIR") == str(second_dir)  # ...and not the first job's
    assert first["handlers"] != before["handlers"]  # Interrupted on SIGINT/SIGTERM, during the job only
    assert second == first  # nothing of the first job reached the second
    first.pop("handlers"), before.pop("handlers")
    assert first == before
    assert after == {**before, "handlers": after["handlers"]} and after["handlers"] == state_of_the_process()["handlers"]
    assert len(list((tmp_path / "outputs" / "multiruns").glob("*/*/results.json"))) == 2
