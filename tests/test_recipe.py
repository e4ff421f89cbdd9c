"""The recipe: every k-combination trained at once equals one at a time; features held in float16."""
import pytest
import torch

from tests.conftest import FAST_RUN, compose

THREE = [*FAST_RUN, "data.datasets=[digits,shapes,textures]", "data.sizes.train=64", "data.sizes.val=32",
         "data.sizes.test=32", "merge=portland", "merge.global_epochs=4", "merge.eval_every=2", "merge.views=1",
         "data.num_co_models=2"]


def run(overrides: list[str], root):
    from neulig.config import load
    from neulig.recipe import run_experiment

    return run_experiment(load(compose(overrides, root)))


@pytest.fixture(scope="module")
def together(tmp_path_factory):
    return run(THREE, tmp_path_factory.mktemp("together"))


def test_combinations_trained_at_once_equal_one_at_a_time(together, tmp_path):
    alone = run([*THREE, "merge.runner_many=null"], tmp_path)
    assert [c.datasets for c in together.combos] == [c.datasets for c in alone.combos] == \
        [("digits", "shapes"), ("digits", "textures"), ("shapes", "textures")]
    for a, b in zip(together.combos, alone.combos):
        assert a.details["best_epoch"] == b.details["best_epoch"]
        torch.testing.assert_close(torch.tensor(a.details["global_beta"]), torch.tensor(b.details["global_beta"]),
                                   rtol=1e-5, atol=1e-6)
        assert a.accuracy == b.accuracy


def test_float16_features_are_held_and_cached_at_half_the_bytes(together, tmp_path):
    from neulig.config import load
    from neulig.recipe import prepare

    config = load(compose([*THREE, "feature_dtype=float16"], tmp_path))
    products = prepare(config)
    assert {s.bank.dtype for s in products.features.stores.values()} == {torch.float16}
    full = prepare(load(compose(THREE, tmp_path))).features  # a float32 cache beside it, not the float16 one
    assert {s.bank.dtype for s in full.stores.values()} == {torch.float32}
    assert products.features.nbytes * 2 == full.nbytes
    half = products.features.stores["test"].bank.float()
    torch.testing.assert_close(half, full.stores["test"].bank, rtol=1e-3, atol=1e-3)
    result = run([*THREE, "feature_dtype=float16"], tmp_path)
    for a, b in zip(together.combos, result.combos):  # the same experiment up to float16 rounding
        for key in ("ensembled", "merged"):
            for d in a.datasets:
                assert abs(a.accuracy[key][d] - b.accuracy[key][d]) <= 10.0


def test_one_at_a_time_only_for_several_devices_or_aligned_experts(tmp_path):
    from neulig.config import load
    from neulig.recipe import one_at_a_time

    assert one_at_a_time(load(compose(THREE, tmp_path))) is None  # the runs above trained at once
    assert "trainer.devices=2" in one_at_a_time(load(compose([*THREE, "trainer.devices=2"], tmp_path)))
    assert "align=weight" in one_at_a_time(load(compose([*THREE, "align=weight"], tmp_path)))
