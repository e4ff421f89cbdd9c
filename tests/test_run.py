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
