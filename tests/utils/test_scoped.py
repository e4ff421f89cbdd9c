"""environ() and random_state() put process state back as it was."""
import os
import random

import numpy as np
import torch

from neulig.utils.scoped import environ, random_state


def test_environ_sets_removes_and_restores(monkeypatch):
    monkeypatch.setenv("NEULIG_TEST_KEPT", "before")
    monkeypatch.delenv("NEULIG_TEST_NEW", raising=False)
    with environ(NEULIG_TEST_KEPT=None, NEULIG_TEST_NEW="inside"):
        assert "NEULIG_TEST_KEPT" not in os.environ and os.environ["NEULIG_TEST_NEW"] == "inside"
    assert os.environ["NEULIG_TEST_KEPT"] == "before" and "NEULIG_TEST_NEW" not in os.environ


def test_random_state_restores_every_global_generator(monkeypatch):
    import lightning as L

    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    expected = torch.rand(3), random.random(), np.random.rand()
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    with random_state():
        L.seed_everything(99, verbose=False)
        torch.rand(10)
    assert "PL_GLOBAL_SEED" not in os.environ
    got = torch.rand(3), random.random(), np.random.rand()
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]
