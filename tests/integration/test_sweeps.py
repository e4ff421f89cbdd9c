"""A parallel joblib sweep on a fresh store: the good jobs finish and are recorded (no race on the store),
the jobs whose options are wrong fail alone, each with one line, before anything of theirs runs."""
import os
import subprocess
import sys

from tests.conftest import REPO, TINY_OVERRIDES
from tests.output_checks import warning_lines


def test_joblib_sweep_two_methods_on_a_fresh_store_and_bad_jobs_fail_alone(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("NEULIG_RUN_DIR", None)
    env.pop("PYTHONWARNINGS", None)  # as a user runs it, whatever the caller's warning filters
    command = [sys.executable, "-m", "neulig.run", "-m", "hydra/launcher=joblib", "merge=average,task_arithmetic",
               "seed=0,abc", f"paths.root_dir={tmp_path}", *TINY_OVERRIDES]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert errors == [f"neulig: error in job {n}: seed=abc: an integer" for n in (1, 3)], proc.stderr[-3000:]
    assert not warning_lines(proc.stderr), proc.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/outputs/mlflow.db")
    experiment = client.get_experiment_by_name("neulig-embedded-tiny")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["average-embedded-tiny-s0", "task_arithmetic-embedded-tiny-s0"]
    assert all(r.info.status == "FINISHED" and "acc/merged/avg" in r.data.metrics for r in runs)
