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
    assert "unknown merge 'nosuch'" in lines[0]
    assert "portland" in lines[0] and "task_arithmetic" in lines[0]


def test_unknown_option_in_any_group():
    for group in ("model", "data", "trainer", "logger"):
        proc = run_cli(f"{group}=nosuch")
        assert proc.returncode == 2 and f"unknown {group} 'nosuch'" in proc.stderr


def test_missing_pretrained_weights_name_the_expected_file(tmp_path):
    proc = run_cli("model=vit_b32", f"paths.root_dir={tmp_path}")
    assert proc.returncode == 2
    lines = error_lines(proc)
    assert len(lines) == 1, proc.stderr
    assert str(tmp_path / "weights" / "ViT-B-32_openai.bin") in lines[0]
    assert not (tmp_path / "outputs" / "cache").exists()  # nothing started, nothing written


def test_num_co_models_out_of_range(tmp_path):
    proc = run_cli("data.num_co_models=9", f"paths.root_dir={tmp_path}")
    assert proc.returncode == 2 and "num_co_models=9 is out of range" in proc.stderr
