"""``python -m neulig.diagnose``: the sweep's ends are the backbone and the summed task vectors, and the
rank correlation is Spearman's."""
import json
import math
import subprocess
import sys

import pytest
import torch

from neulig.diagnose import Diagnosis, Score, SweepPoint
from tests.conftest import FAST_RUN, REPO, compose


def made(entropies: list[float], accuracies: list[float]) -> Diagnosis:
    sweep = [SweepPoint(i / 10, {"a": Score(acc, h)}) for i, (h, acc) in enumerate(zip(entropies, accuracies))]
    return Diagnosis(["a"], 1.0, {"a": Score(50.0, 1.0)}, {"a": {"a": Score(90.0, 0.1)}}, sweep)


def test_spearman_of_ranks_with_ties_and_constants():
    assert made([3, 2, 1, 0], [10, 20, 30, 40]).spearman() == pytest.approx(-1.0)
    assert made([0, 1, 4, 9], [1, 2, 3, 4]).spearman("a") == pytest.approx(1.0)  # ranks, not values
    # ties share their mean rank: entropy ranks (1.5, 1.5, 3, 4) against accuracy ranks (4, 3, 2, 1)
    rx, ry = torch.tensor([1.5, 1.5, 3, 4]), torch.tensor([4.0, 3, 2, 1])
    expected = float(torch.corrcoef(torch.stack([rx, ry]))[0, 1])
    assert made([1, 1, 2, 3], [40, 30, 20, 10]).spearman() == pytest.approx(expected)
    assert math.isnan(made([1, 1, 1], [1, 2, 3]).spearman())


@pytest.fixture(scope="module")
def diagnosis(tmp_path_factory):
    from neulig.config import load
    from neulig.diagnose import diagnose

    config = load(compose([*FAST_RUN, "data.datasets=[digits,shapes,textures]"], tmp_path_factory.mktemp("diag")))
    return config, diagnose(config, lambdas=(0.0, 0.5, 1.0))


def test_the_sweep_starts_at_the_backbone_and_reads_the_run_s_stages(diagnosis):
    from neulig.recipe import prepare

    config, result = diagnosis
    products = prepare(config)  # from the cache the diagnosis filled
    assert result.tasks == ["digits", "shapes", "textures"] and [p.scaling for p in result.sweep] == [0.0, 0.5, 1.0]
    for d in result.tasks:  # lambda = 0 is theta_0: the zero-shot model, through merged_features
        assert result.sweep[0].tasks[d].acc == result.zero_shot[d].acc
        assert result.sweep[0].tasks[d].entropy == pytest.approx(result.zero_shot[d].entropy, abs=1e-5)
        assert result.zero_shot[d].acc == pytest.approx(products.reference["pretrained"][d])
        assert result.experts[d][d].acc == pytest.approx(products.reference["finetuned"][d])
    assert result.logit_scale == pytest.approx(float(products.base.clip.logit_scale.detach().exp()))
    json.dumps(result.to_json())


def test_cli_prints_the_report_and_refuses_a_bad_option(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "neulig.diagnose", "seed=abc"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [bad.stderr.strip()]
    assert bad.stderr.startswith("neulig: error: seed=abc")
    mixed = subprocess.run([sys.executable, "-m", "neulig.diagnose", "model.origins=[0,1]"], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert mixed.returncode == 2 and "experts of one origin" in mixed.stderr
