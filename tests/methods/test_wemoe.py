"""The WeMoE runner on a tiny combination: routers train, the result holds both accuracies."""
import pytest

from neulig.methods.wemoe import run
from tests.methods.toys import check_accuracies, context, method, tiny_combination


def test_runner_smoke():
    combination = tiny_combination()
    config = method("wemoe", "merge.steps=3", "merge.lr=1e-2", "merge.batch_size=4", "merge.log_every=1")
    result = run(combination, config, context())
    check_accuracies(result, combination)
    assert [h["epoch"] for h in result.history if "train/loss" in h] == [1, 2, 3]
    assert all("lr" in h and h["routing/min"] <= h["routing/max"] for h in result.history if "train/loss" in h)
    assert [h["epoch"] for h in result.history if "test/merged_avg" in h] == [0, 3]
    assert result.diagnostics["drift/routing_min"] <= result.diagnostics["drift/routing_max"]
    assert all(len(v) == 2 and sum(v) == pytest.approx(1.0) for v in result.details["routing_mean"].values())


def test_fusionbench_recipe_trains_at_a_constant_rate():
    combination = tiny_combination()
    config = method("wemoe_fusionbench", "merge.steps=2", "merge.batch_size=4", "merge.log_every=1",
                    "merge.curve_every=0")
    result = run(combination, config, context())
    assert all(h["lr"] == pytest.approx(1e-4) for h in result.history)  # constant rate
    assert result.diagnostics["drift/routing_min"] < result.diagnostics["drift/routing_max"]
