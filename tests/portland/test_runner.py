"""Portland's runner with ``regularizer=fisher_variance`` (docs/neural_ligand.md §13): the experts' Fishers
are estimated on their own train splits, once per run, on the tiny, ViT-B/32 and RN50 image towers, and
a combination's Fisher-weighted Gram matrix is the definition's whether it is computed alone or with others."""
from __future__ import annotations

import pytest
import torch

from neulig.data.base import DatasetSpec, LoadedDataset, TensorImages
from neulig.methods.combination import Combination
from neulig.portland.runner import combo_inputs, fishers_of, run
from tests.alignment import towers
from tests.methods.toys import check_accuracies, context, method, tiny_combination
from tests.portland.test_statistics import fisher_gram_definition

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ("a", "b", "c")


def combination(visual, experts: dict, names: tuple[str, ...], seed: int = 0) -> Combination:
    """The datasets ``names`` (8 random images, 3 classes each) with their experts; no cached features."""
    g = torch.Generator().manual_seed(seed)
    size = towers.image_size(visual)
    datasets, heads = {}, {}
    for n in NAMES:
        images = TensorImages(torch.randint(0, 256, (8, 3, size, size), dtype=torch.uint8, generator=g),
                              torch.randint(0, 3, (8,), generator=g))
        datasets[n] = LoadedDataset(DatasetSpec(n, ("x", "y", "z"), ("{}",)), images, images, images)
        heads[n] = 10 * torch.nn.functional.normalize(torch.randn(3, visual.output_dim, generator=g), dim=-1)
    return Combination(names=list(names), datasets={n: datasets[n] for n in names}, heads=heads, base=experts["a"],
                       experts=[experts[n] for n in names], features={}, visual=visual, device=torch.device("cpu"),
                       expert_names=names)


@pytest.mark.parametrize("tower", towers.TOWERS)
def test_fisher_gram_on_each_architecture(tower):
    visual = towers.build(tower)
    experts = {n: towers.lively_state(visual, seed=i) for i, n in enumerate(NAMES)}
    options = method("portland", "merge.regularizer=fisher_variance", "merge.fisher.num_batches=1",
                     "merge.fisher.batch_size=4")
    pair, triple = combination(visual, experts, ("a", "b")), combination(visual, experts, NAMES)
    together = combo_inputs([pair, triple], options, seed=0)  # one Fisher per expert, shared by the combinations
    alone = combo_inputs([triple], options, seed=0)[0].stats.fisher_gram
    fishers = fishers_of(triple, options, seed=0)
    expected = fisher_gram_definition([experts[n] for n in NAMES], fishers, options.offsets_over)
    torch.testing.assert_close(alone, expected, rtol=1e-10, atol=0)
    torch.testing.assert_close(together[1].stats.fisher_gram, expected, rtol=1e-10, atol=0)
    assert torch.linalg.eigvalsh(expected).min() > -1e-9 * expected.diagonal().max()  # a Gram matrix
    assert expected.diagonal().min() > 0  # every expert has curvature somewhere
    pair_fishers = [fishers[0], fishers[1]]
    torch.testing.assert_close(together[0].stats.fisher_gram,
                               fisher_gram_definition([experts["a"], experts["b"]], pair_fishers, options.offsets_over),
                               rtol=1e-10, atol=0)


def test_a_portland_run_with_fisher_variance():
    combo = tiny_combination()
    options = method("portland", "merge.regularizer=fisher_variance", "merge.fisher.num_batches=1",
                     "merge.fisher.batch_size=8", "merge.global_epochs=2", "merge.eval_every=1", "merge.views=0")
    result = run(combo, options, context())
    check_accuracies(result, combo)
    assert 0.0 <= result.diagnostics["beta/spread/avg"] <= 2.0
    val = result.accuracy["val_ensembled"]  # the selected epoch's validation ensemble, re-measured
    assert sum(val.values()) / len(val) == pytest.approx(result.details["best_val_ensembled"], abs=1e-6)
    assert set(result.accuracy["val_merged"]) == set(combo.names)
