"""The AdaMerging runner on a tiny combination: lambdas move, the result holds both accuracies."""
import pytest

from neulig.methods.adamerging import run
from tests.methods.toys import check_accuracies, context, method, tiny_combination


@pytest.mark.parametrize("granularity", ["layer", "task"])
def test_runner_smoke(granularity):
    combination = tiny_combination()
    config = method("adamerging", f"merge.granularity={granularity}", "merge.steps=3", "merge.lr=1e-2",
                    "merge.batch_size=4", "merge.log_every=1")
    result = run(combination, config, context())
    check_accuracies(result, combination)
    assert [h["epoch"] for h in result.history] == [1, 2, 3] and all("train/loss" in h for h in result.history)
    assert any(abs(v - 0.3) > 1e-4 for v in result.details["lambda_mean"].values())  # the lambdas did move
    assert sum(result.details["coefficients"].values()) == pytest.approx(1.0)
    assert [m.name for m in result.merged] == ["merged"]
