"""The CLI answers user mistakes with one line and a non-zero exit, fast (before heavy imports)."""
import os
import subprocess
import sys

from tests.conftest import REPO


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "neulig.run", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, env=env, timeout=120)


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


def test_unknown_merge_lists_the_methods():
    proc = run_cli("merge=nosuch")
    assert proc.returncode == 2
    lines = error_lines(proc)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("neulig: error: merge=nosuch: one of ")
    assert "portland" in lines[0] and "task_arithmetic" in lines[0]


def test_missing_pretrained_weights_name_the_expected_file(tmp_path):
    proc = run_cli("model=vit_b32", f"paths.root_dir={tmp_path}")
    assert proc.returncode == 2
    lines = error_lines(proc)
    assert len(lines) == 1, proc.stderr
    assert str(tmp_path / "weights" / "ViT-B-32-quickgelu_openai.safetensors") in lines[0]
    assert not (tmp_path / "outputs" / "cache").exists()  # nothing started, nothing written


def test_num_co_models_out_of_range(tmp_path):
    proc = run_cli("data.num_co_models=9", f"paths.root_dir={tmp_path}")
    assert proc.returncode == 2 and "data.num_co_models=9: null or an integer in 2..4" in proc.stderr
    assert len(error_lines(proc)) == 1, proc.stderr
    assert not (tmp_path / "outputs" / "cache").exists()


def test_missing_real_datasets_are_one_line_each_before_any_work(tmp_path):
    proc = run_cli("data=paper5", "model.pretrained=null", f"paths.root_dir={tmp_path}")
    assert proc.returncode == 2
    lines = error_lines(proc)
    assert len(lines) == 5 and all(line.startswith("neulig: error: dataset ") for line in lines), proc.stderr
    assert "dataset gtsrb not found under" in lines[0] and str(tmp_path / "data" / "gtsrb") in lines[0]
    assert "dataset mnist not found under" in lines[4]
    assert not (tmp_path / "outputs" / "cache").exists()


def test_unreachable_tracking_store_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = run_cli(f"paths.root_dir={tmp_path}", f"logger.tracking_uri=sqlite:///{blocker}/sub/mlflow.db")
    assert proc.returncode == 2
    lines = [line for line in error_lines(proc) if not line.startswith("[neulig] device: ")]  # the run's first line
    assert len(lines) == 1 and "MLflow tracking store" in lines[0] and "unreachable" in lines[0], proc.stderr
    assert not (tmp_path / "outputs" / "cache").exists()  # nothing trained
