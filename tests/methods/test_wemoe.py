"""The WeMoE runner on a tiny combination: routers train, the result holds both accuracies."""
import pytest

from neulig.methods.wemoe import run
from tests.methods.toys import check_accuracies, context, method, tiny_combination


def test_runner_smoke():
    combination = tiny_combination()
    config = method("wemoe", "merge.steps=3", "merge.lr=1e-2", "merge.batch_size=4", "merge.log_every=1")
    result = run(combination, config, context())
    check_accuracies(result, combination)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert all("train/loss" in h and "lr" in h for h in result.history)
    assert all(len(v) == 2 and sum(v) == pytest.approx(1.0) for v in result.details["routing_mean"].values())
