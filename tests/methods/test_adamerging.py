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
    assert [h["epoch"] for h in result.history if "train/loss" in h] == [1, 2, 3]
    curve = [h for h in result.history if "test/merged_avg" in h]  # curve_every 100: before step 1 and at the end
    assert [h["epoch"] for h in curve] == [0, 3] and all(0 <= h["val/merged_avg"] <= 100 for h in curve)
    assert set(result.diagnostics) == {"drift/lambda_outside_unit", "drift/lambda_min", "drift/lambda_max"}
    assert any(abs(v - 0.3) > 1e-4 for v in result.details["lambda_mean"].values())  # the lambdas did move
    assert sum(result.details["coefficients"].values()) == pytest.approx(1.0)
    assert [m.name for m in result.merged] == ["merged"]


def test_fusionbench_recipe_lets_lambdas_leave_the_unit_interval():
    """clamp=false (merge=adamerging_fusionbench): the raw lambdas are used, and a large lr pushes some out."""
    combination = tiny_combination()
    config = method("adamerging_fusionbench", "merge.steps=3", "merge.lr=1.0", "merge.batch_size=4",
                    "merge.log_every=1", "merge.curve_every=0")
    result = run(combination, config, context())
    assert result.diagnostics["drift/lambda_outside_unit"] > 0
    assert all("test/merged_avg" not in h for h in result.history)  # curve_every 0: no curve
    assert sum(result.details["coefficients"].values()) == pytest.approx(1.0)
