"""Cores shared by the runs computing on one machine: threads and workers from the count of active runs."""
import os
import subprocess
import sys

import pytest
import torch

from neulig.utils import cores


def test_plan_splits_a_share_between_threads_and_workers():
    assert cores.plan("auto", 0, cores=8) == (8, 0)
    assert cores.plan("auto", "auto", cores=8) == (6, 2)  # together never more than the share
    assert cores.plan("auto", "auto", cores=2) == (2, 0)  # too few cores to give any to workers
    assert cores.plan(3, "auto", cores=8) == (3, 2) and cores.plan("auto", 5, cores=2) == (2, 5)  # counts are kept


def test_only_live_active_runs_count(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / dead.stdout.strip()).write_text("active")  # a killed run's entry
    (tmp_path / str(os.getppid())).write_text("waiting")  # a live run waiting on a lock
    assert cores.active_runs(tmp_path) == 1  # none counted, but this one is computing
    (tmp_path / str(os.getppid())).write_text("active")
    assert cores.active_runs(tmp_path) == 1 and sorted(p.name for p in tmp_path.iterdir()) == [str(os.getppid())]
    with cores.sharing("auto", tmp_path) as threads:
        assert cores.active_runs(tmp_path) == 2 and threads == max(1, cores.cpu_count() // 2)
        assert (tmp_path / str(os.getpid())).read_text() == "active"
        with cores.waiting():
            assert (tmp_path / str(os.getpid())).read_text() == "waiting" and cores.active_runs(tmp_path) == 1
        assert (tmp_path / str(os.getpid())).read_text() == "active"
    assert not (tmp_path / str(os.getpid())).exists()


@pytest.mark.parametrize("setting", ["auto", 1])
def test_sharing_sets_and_restores_torch_threads(tmp_path, setting):
    before = torch.get_num_threads()
    with cores.sharing(setting, tmp_path) as threads:
        assert torch.get_num_threads() == threads == (cores.cpu_count() if setting == "auto" else 1)
    assert torch.get_num_threads() == before
