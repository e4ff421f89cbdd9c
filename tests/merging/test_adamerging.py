"""AdaMerging (arXiv 2310.02575) against the hand-checkable oracles of methods.md §9, plus a runner smoke test.

``tiny_combo`` (a Combo of 2 fake experts on the tiny open_clip ViT and 2 small TensorImages datasets)
is shared with test_wemoe.py.
"""
from __future__ import annotations

import copy
import functools
import math

import pytest
import torch

from merge_toys import assert_close, make_family
from neulig.errors import NeuligError
from neulig.merging.adamerging import AdaMergingWeights, entropy, entropy_objective, merge_params
from neulig.merging.state_dict import classify_keys

TRAINER = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False, "deterministic": False}


def scalar_family(theta_0, taus):
    base = {"w": torch.tensor(theta_0)}
    return base, [{"w": base["w"] + torch.tensor(t)} for t in taus]


# -- merge ---------------------------------------------------------------------------------------
def test_task_wise_merge_oracle_clamps():
    base, experts = scalar_family([1.0, 1.0], [[2.0, 0.0], [0.0, -4.0]])
    lam = torch.tensor([0.25, 1.2])  # clamp -> [0.25, 1.0]
    taus = [{"w": e["w"] - base["w"]} for e in experts]
    assert_close(merge_params(base, taus, lam, ["w"])["w"], [1.5, -3.0])
    merger = AdaMergingWeights(base, experts, "task")
    with torch.no_grad():
        merger.lambdas.copy_(lam.view(1, 2))
    assert_close(merger.merged_state()["w"], [1.5, -3.0])
    assert_close(merger.ensemble_coefficients(), [0.2, 0.8])


def test_layer_wise_merge_is_per_tensor_and_keyed_by_name():
    base, experts = make_family(2)  # BatchNorm statistics and integer buffers interleaved with parameters
    keys = classify_keys(base).params
    merger = AdaMergingWeights(base, experts, "layer")
    assert merger.lambdas.shape == (len(keys), 2)
    with torch.no_grad():
        merger.lambdas.copy_(torch.rand(len(keys), 2, generator=torch.Generator().manual_seed(0)) * 1.4 - 0.2)
    state = merger.merged_state()
    taus = [{k: e[k] - base[k] for k in keys} for e in experts]
    expected = merge_params(base, taus, merger.lambdas.detach(), keys)
    assert set(state) == set(base)
    for j, key in enumerate(keys):
        c = merger.lambdas[j].detach().clamp(0, 1)
        assert_close(state[key], base[key] + c[0] * taus[0][key] + c[1] * taus[1][key], atol=1e-5, msg=key)
        assert_close(state[key], expected[key], atol=1e-5, msg=key)
    assert torch.equal(state["pos_ids"], base["pos_ids"]) and torch.equal(state["bn1.num_batches_tracked"],
                                                                          base["bn1.num_batches_tracked"])
    assert_close(merger.ensemble_coefficients(), merger.lambdas.detach().clamp(0, 1).mean(0) /
                 merger.lambdas.detach().clamp(0, 1).mean(0).sum())


def test_init_lambda_is_task_arithmetic():
    from neulig.merging import task_arithmetic

    base, experts = make_family(3)
    state = AdaMergingWeights(base, experts, "layer", init_lambda=0.3).merged_state()
    expected = task_arithmetic.merge(base, experts, 0.3)
    for key in classify_keys(base).params:
        assert_close(state[key], expected[key], atol=1e-5, msg=key)


def test_bad_granularity_is_one_line():
    base, experts = scalar_family([1.0], [[1.0]])
    with pytest.raises(NeuligError, match="granularity"):
        AdaMergingWeights(base, experts, "block")


# -- objective and optimisation --------------------------------------------------------------------
def toy_step(lam0: float) -> tuple[AdaMergingWeights, torch.Tensor]:
    """logits [lambda * 2, 0]: theta_0 = 0 and tau = 2 for a one-parameter "model"; one Adam step."""
    merger = AdaMergingWeights(*scalar_family([0.0], [[2.0]]), "task", init_lambda=lam0)
    optimizer = torch.optim.Adam(merger.parameters(), lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0)
    logits = torch.cat([merger.merged_state()["w"], torch.zeros(1)]).view(1, 2)
    loss = entropy_objective([logits])
    loss.backward()
    grad = merger.lambdas.grad.clone()
    optimizer.step()
    return merger, torch.stack([loss.detach(), grad.view(())])


def test_one_adam_step_oracle():
    merger, (h, grad) = toy_step(0.3)
    assert h.item() == pytest.approx(0.650094, abs=1e-6)
    assert grad.item() == pytest.approx(-0.274541, abs=1e-6)
    assert merger.lambdas.item() == pytest.approx(0.301, abs=1e-7)  # moved by lr against the gradient's sign


@pytest.mark.parametrize("lam0", [1.2, -0.1])
def test_clamp_freezes_lambda_outside_unit_interval(lam0):
    merger, (_, grad) = toy_step(lam0)
    assert grad.item() == 0.0
    assert merger.lambdas.item() == torch.tensor(lam0).item()  # untouched, bit for bit


def test_entropy_is_softmax_times_log_softmax():
    assert entropy(torch.zeros(2, 4)).tolist() == pytest.approx([math.log(4)] * 2)
    assert entropy_objective([torch.zeros(3, 2), torch.zeros(1, 4)]).item() == pytest.approx(math.log(2) + math.log(4))


# -- a tiny Combo on the real tiny open_clip ViT, shared with test_wemoe.py -------------------------------
_CLIP = {}


def tiny_visual():
    from neulig.stages import _quiet_create

    if "visual" not in _CLIP:
        _CLIP["visual"] = _quiet_create("neulig-tiny", None, 0).visual.eval()
    return _CLIP["visual"]


@functools.lru_cache(maxsize=1)
def tiny_combo(num_test: int = 24):
    """2 fake experts (perturbed copies of the tiny visual) on 2 random 3-class TensorImages datasets
    (cached: the runners never modify a Combo)."""
    from neulig.combine import Combo
    from neulig.data.base import DatasetSpec, LoadedDataset, TensorImages
    from neulig.stages import encode

    visual = tiny_visual()
    g = torch.Generator().manual_seed(0)
    base = {k: v.detach().clone() for k, v in visual.state_dict().items()}
    experts = [{k: v + 0.02 * torch.randn(v.shape, generator=g) for k, v in base.items()} for _ in range(2)]
    names, datasets, heads, features = ["alpha", "beta"], {}, {}, {}
    for name in names:
        images = TensorImages(torch.randint(0, 256, (num_test, 3, 32, 32), dtype=torch.uint8, generator=g),
                              torch.randint(0, 3, (num_test,), generator=g))
        datasets[name] = LoadedDataset(DatasetSpec(name, ("a", "b", "c"), ("{}",)), images, images, images)
        heads[name] = 10 * torch.nn.functional.normalize(torch.randn(3, visual.output_dim, generator=g), dim=-1)
    scratch = copy.deepcopy(visual)
    for name in names:
        per_expert = []
        for state in experts:
            scratch.load_state_dict(state)
            per_expert.append(encode(scratch, datasets[name].test, 64, torch.device("cpu")))
        stacked = torch.stack(per_expert, 1)
        features[name] = {"train": stacked, "val": stacked, "test": stacked}
    return Combo(names=names, datasets=datasets, heads=heads, base=base, experts=experts, features=features,
                 visual=visual, device=torch.device("cpu"), eval_batch_size=64)


def check_result(result: dict, combo) -> None:
    for kind in ("merged", "ensembled"):
        assert set(result[kind]) == set(combo.names)
        assert all(0.0 <= v <= 100.0 for v in result[kind].values())


@pytest.mark.parametrize("granularity", ["layer", "task"])
def test_runner_smoke(granularity):
    from neulig.tta import run_adamerging

    combo = tiny_combo()
    cfg = {"name": "adamerging", "granularity": granularity, "steps": 3, "lr": 1e-2, "batch_size": 4,
           "batches_per_task": 2, "init_lambda": 0.3, "log_every": 1}
    result, history = run_adamerging(combo, cfg, TRAINER, "features", 0, [])
    check_result(result, combo)
    assert [h["epoch"] for h in history] == [1, 2, 3] and all("train/loss" in h for h in history)
    assert any(abs(v - 0.3) > 1e-4 for v in result["lambda_mean"].values())  # the lambdas did move
    assert sum(result["coefficients"].values()) == pytest.approx(1.0)
