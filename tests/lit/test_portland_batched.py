"""Combinations trained together (``neulig.lit.portland_batched``) equal each combination trained alone
with ``PortlandModule`` (arXiv 2503.01268, docs/neural_ligand.md §7): best state within 1e-5, same best
epoch, same history; the functional Adam equals ``torch.optim.Adam`` step for step."""
from __future__ import annotations

import dataclasses
import itertools
import re

import lightning as L
import pytest
import torch
from torch import Tensor

from neulig.data.feature_store import FeatureStore, StackedSources
from neulig.errors import NeuligError
from neulig.lit.portland import PortlandModule
from neulig.lit.portland_batched import ComboInputs, PortlandOptions, ensembled_accuracy, fit_combinations, initial_state
from neulig.merging.portland import Portland, loss_sums, offset_statistics, regularizer_statistic
from neulig.merging.portland_batched import adam_scalars, adam_step, batched_beta, batched_loss
from neulig.utils.log import quiet_lightning

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-5




# ---- the functional pieces -------------------------------------------------------------------------


def test_functional_adam_equals_torch_adam_step_for_step():
    """Three combinations stepping at different rates (the others' moments and counts stay put),
    gradients from 1e-9 to 10: every parameter equals torch.optim.Adam's, bit for bit, at every step."""
    g = torch.Generator().manual_seed(0)
    shapes = [(4, 12), (4,)]
    params = [torch.randn(3, *s, generator=g) for s in shapes]
    alone = [[torch.nn.Parameter(p[c].clone()) for p in params] for c in range(3)]
    optims = [torch.optim.Adam(ps, lr=1e-3) for ps in alone]
    moments = [[torch.zeros_like(p) for p in params] for _ in range(2)]
    counts = [0, 0, 0]
    neg_step, bc2_sqrt = adam_scalars(100, 1e-3)
    for it in range(100):
        grads = [torch.randn(3, *s, generator=g) * 10.0 ** float(torch.randint(-9, 2, (), generator=g)) for s in shapes]
        active = [c for c in range(3) if it % (c + 1) == 0]
        for c in active:
            for p, grad in zip(alone[c], grads):
                p.grad = grad[c].clone()
            optims[c].step()
            counts[c] += 1
        index = torch.tensor(active)
        part = [[t[index] for t in ts] for ts in (params, grads, *moments)]
        steps = [counts[c] for c in active]
        adam_step(part[0], part[1], part[2], part[3], torch.from_numpy(neg_step[steps]), torch.from_numpy(bc2_sqrt[steps]))
        for ts, new in zip((params, moments[0], moments[1]), (part[0], part[2], part[3])):
            for t, n in zip(ts, new):
                t[index] = n
        for c in range(3):
            for p, mine in zip(alone[c], params):
                assert torch.equal(p.data, mine[c]), f"combination {c} differs after step {it}"
    assert [int(o.state[ps[0]]["step"]) for o, ps in zip(optims, alone)] == counts


@pytest.mark.parametrize("loss,regularizer", [("sup", "reference"), ("semi", "exact")])
def test_batched_loss_is_each_combinations_loss_sums(loss, regularizer):
    """Three combinations whose heads have 3, 5 and 3 classes (two head groups), one with a short batch
    (4 real rows in 6)."""
    g = torch.Generator().manual_seed(1)
    t, d, b = 2, 5, 6
    classes = [3, 5, 3]
    heads = [torch.randn(k, d, generator=g) for k in classes]
    z = torch.randn(3, b, t, d, generator=g)
    y = torch.stack([torch.randint(0, k, (b,), generator=g) for k in classes])
    stats = [regularizer_statistic(regularizer, *offset_statistics(torch.randn(t, 7, generator=g))) for _ in range(3)]
    portlands = [Portland(t, d) for _ in range(3)]
    weight = torch.stack([p.linear.weight.detach() for p in portlands])
    bias = torch.stack([p.linear.bias.detach() for p in portlands])
    groups = [(torch.tensor([0, 2]), torch.stack([heads[0], heads[2]])), (torch.tensor([1]), heads[1][None])]
    lengths = torch.tensor([6.0, 4.0, 6.0])
    mask = (torch.arange(b) < lengths[:, None]).float()
    got = batched_loss(batched_beta(weight, bias, z), z, groups, y, mask, lengths, loss, regularizer,
                       torch.stack(stats), 100.0)
    for c in range(3):
        n = int(lengths[c])
        l_b, l_a = loss_sums(portlands[c](z[c, :n]), z[c, :n], heads[c], y[c, :n], loss, regularizer, stats[c])
        torch.testing.assert_close(got[c], ((l_b + l_a / 100.0) / n).detach(), rtol=1e-6, atol=1e-6)


def test_run_store_reads_what_stacking_reads_views_included():
    """The run's train store (clean rows then views, labels repeated) gives a combination what
    ``training_features`` stacks for it, in the combination's expert order, rounded to float16 once."""
    from neulig.stages.features import RunFeatures

    g = torch.Generator().manual_seed(2)
    sizes, experts = {"a": 5, "b": 3}, ["a", "b"]
    run = RunFeatures(experts, {d: {"train": n, "val": 2, "test": 1} for d, n in sizes.items()}, 2, 4, torch.float16)
    for d, n in sizes.items():
        run.put_labels(d, {"train": torch.arange(n), "val": torch.zeros(2), "test": torch.zeros(1)})
        for e in experts:
            splits = {"train": torch.randn(n, 4, generator=g), "val": torch.randn(2, 4, generator=g), "test": torch.randn(1, 4)}
            run.put(e, d, splits, torch.randn(2 * n, 4, generator=g))
    sources = run.stores["train"].sources([("b", "a")])
    for j, d in enumerate(("b", "a")):
        stacked = run.stacked(["b", "a"], d)
        expected = torch.cat([stacked.train, stacked.train_views])
        assert expected.dtype == torch.float32 and expected.shape == (3 * sizes[d], 2, 4)
        rows = torch.arange(3 * sizes[d]).flip(0)
        torch.testing.assert_close(sources.gather(j, rows[None]), expected[rows][None], rtol=0, atol=0)
        assert torch.equal(sources.labels(0, j), torch.arange(sizes[d]).repeat(3))


def stacked_sources(combinations, split: str) -> StackedSources:
    """Per combination and dataset the stacked [N, T, d] features of ``split`` (train: with the views)."""
    from neulig.methods.portland import training_features

    def pair(c, d):
        return training_features(c, d) if split == "train" else (c.features[d].val, c.labels(d, "val"))

    return StackedSources([[pair(c, d) for d in c.names] for c in combinations])


# ---- trained together vs alone: synthetic features ------------------------------------------------


SIZES, VAL, CLASSES, DIM = {"a": 50, "b": 37, "c": 70, "d": 21}, {"a": 13, "b": 20, "c": 9, "d": 17}, \
    {"a": 3, "b": 5, "c": 4, "d": 2}, 8


def synthetic(seed: int = 1) -> tuple[dict, dict, dict, dict]:
    """Expert e's features of dataset n: its head's class row (strong for the dataset's own expert) plus noise."""
    g = torch.Generator().manual_seed(seed)
    heads = {n: torch.randn(k, DIM, generator=g) * 10 for n, k in CLASSES.items()}
    labels = {n: (torch.randint(0, CLASSES[n], (SIZES[n],), generator=g),
                  torch.randint(0, CLASSES[n], (VAL[n],), generator=g)) for n in SIZES}
    feats = {(e, n): tuple(heads[n][labels[n][i]] * (0.3 if e == n else 0.03) + torch.randn(len(labels[n][i]), DIM,
                                                                                            generator=g)
                           for i in (0, 1)) for e in SIZES for n in SIZES}
    theta = {n: torch.randn(30, generator=g) for n in SIZES}
    return heads, labels, feats, theta


def train_alone(train_sets: dict, val_sets: dict, heads: dict, eps_star: Tensor, gram: Tensor, options: PortlandOptions,
                dim: int) -> PortlandModule:
    """PortlandModule fitted by a Lightning Trainer, as ``methods.portland.run`` sets it up."""
    quiet_lightning()
    L.seed_everything(options.seed, verbose=False)
    module = PortlandModule(train_sets, val_sets, heads, dim, loss=options.loss, scaling=options.scaling,
                            regularizer=options.regularizer, eps_star=eps_star, gram=gram, lr=options.lr,
                            batch_size=options.batch_size, eval_every=options.eval_every, seed=options.seed)
    L.Trainer(max_epochs=options.global_epochs, logger=False, enable_checkpointing=False, enable_model_summary=False,
              enable_progress_bar=False, num_sanity_val_steps=0, use_distributed_sampler=False,
              accelerator="cpu", devices=1).fit(module)
    return module


def assert_same(module: PortlandModule, fit) -> None:
    """``fit`` (trained together) equals ``module`` (trained alone): best state within 1e-5, best epoch,
    history (epochs exactly, accuracies and losses within 1e-5)."""
    assert fit.best_epoch == module.best_epoch, fit.names
    assert fit.best_val_acc == pytest.approx(module.best_val_acc, abs=TOL)
    for key, value in module.best_state.items():
        torch.testing.assert_close(fit.state[key], value, rtol=0, atol=TOL, msg=f"{fit.names} {key}")
    assert [h["epoch"] for h in fit.history] == [h["epoch"] for h in module.history]
    for mine, theirs in zip(fit.history, module.history):
        assert mine["val/ensembled_avg"] == pytest.approx(theirs["val/ensembled_avg"], abs=TOL)
        assert mine["train/loss"] == pytest.approx(theirs["train/loss"], abs=TOL, nan_ok=True)


def synthetic_inputs(groups, heads, labels, feats, theta, rounding: torch.dtype | None = None):
    """Each combination's inputs and stacked [N, T, d] train / val sets (features rounded to ``rounding``)."""
    def stack(group, n: str, i: int) -> Tensor:
        parts = [feats[(e, n)][i] for e in group]
        return torch.stack(parts if rounding is None else [p.to(rounding).float() for p in parts], 1)

    combos, train, val = [], [], []
    for group in groups:
        eps_star, gram = offset_statistics(torch.stack([theta[n] for n in group]))
        combos.append(ComboInputs(group, tuple(heads[n] for n in group), eps_star, gram))
        train.append([(stack(group, n, 0), labels[n][0]) for n in group])
        val.append([(stack(group, n, 1), labels[n][1]) for n in group])
    return combos, train, val


@pytest.mark.parametrize("loss,regularizer", [("sup", "reference"), ("semi", "exact")])
def test_synthetic_combinations_trained_together_equal_alone(loss, regularizer):
    """All 6 pairs of 4 datasets of different sizes (rounds 2..5 per epoch, short last batches) and
    class counts, from stacked tensors and from a float32 store."""
    heads, labels, feats, theta = synthetic()
    options = PortlandOptions(loss=loss, regularizer=regularizer, lr=0.01, batch_size=16, global_epochs=6,
                              eval_every=2, seed=3)
    groups = list(itertools.combinations(SIZES, 2))
    combos, train, val = synthetic_inputs(groups, heads, labels, feats, theta)
    stacked = fit_combinations(combos, StackedSources(train), StackedSources(val), options)
    stores = [FeatureStore(list(SIZES), sizes, DIM) for sizes in (SIZES, VAL)]
    for (e, n), parts in feats.items():
        for store, part, y in zip(stores, parts, labels[n]):
            store.put(e, n, part, y)
    from_store = fit_combinations(combos, stores[0].sources(groups), stores[1].sources(groups), options)
    assert any(f.best_epoch > 0 for f in stacked)  # the comparison is not of the initial state alone
    accuracy = ensembled_accuracy(combos, [f.state for f in stacked], stores[1].sources(groups))
    for c, group in enumerate(groups):
        module = train_alone(dict(zip(group, train[c])), dict(zip(group, val[c])), {n: heads[n] for n in group},
                             combos[c].eps_star, combos[c].gram, options, DIM)
        assert_same(module, stacked[c])
        assert_same(module, from_store[c])
        assert accuracy[c] == pytest.approx(module.validation_accuracy(), abs=TOL)  # the best state's, batched


def test_float16_store_equals_alone_on_the_rounded_features():
    """A float16 store computes in float32: as training alone on the features rounded to float16."""
    heads, labels, feats, theta = synthetic(seed=4)
    options = PortlandOptions(lr=0.01, batch_size=16, global_epochs=4, eval_every=1, seed=0)
    groups = list(itertools.combinations(SIZES, 3))
    combos, train, val = synthetic_inputs(groups, heads, labels, feats, theta, rounding=torch.float16)
    stores = [FeatureStore(list(SIZES), sizes, DIM, torch.float16) for sizes in (SIZES, VAL)]
    for (e, n), parts in feats.items():
        for store, part, y in zip(stores, parts, labels[n]):
            store.put(e, n, part, y)
    fits = fit_combinations(combos, stores[0].sources(groups), stores[1].sources(groups), options)
    for c, group in enumerate(groups):
        module = train_alone(dict(zip(group, train[c])), dict(zip(group, val[c])), {n: heads[n] for n in group},
                             combos[c].eps_star, combos[c].gram, options, DIM)
        assert_same(module, fits[c])


def test_a_non_finite_loss_names_the_combination_and_the_step_of_training_alone():
    heads, labels, feats, theta = synthetic(seed=5)
    feats[("c", "c")][0][11] = float("nan")  # one train row of dataset c, seen by combinations holding c
    options = PortlandOptions(batch_size=16, global_epochs=2, seed=0)
    groups = list(itertools.combinations(SIZES, 2))
    combos, train, val = synthetic_inputs(groups, heads, labels, feats, theta)
    with pytest.raises(NeuligError, match=r"at epoch 1, step \d+ of combination a,c") as batched:
        fit_combinations(combos, StackedSources(train), StackedSources(val), options)
    c = groups.index(("a", "c"))
    with pytest.raises(NeuligError) as alone:
        train_alone(dict(zip(groups[c], train[c])), dict(zip(groups[c], val[c])), {n: heads[n] for n in groups[c]},
                    combos[c].eps_star, combos[c].gram, options, DIM)
    step = re.compile(r"step (\d+)")
    assert step.search(str(batched.value)).group(1) == step.search(str(alone.value)).group(1)


def test_the_initial_state_is_portland_after_seed_everything():
    L.seed_everything(7, verbose=False)
    expected = Portland(3, 4).state_dict()
    state = initial_state(3, 4, seed=7)
    assert all(torch.equal(state[k], expected[k]) for k in expected)


# ---- trained together vs alone: the embedded tasks through the pipeline ---------------------------

EMBEDDED = ("digits", "mnist5k", "shapes", "textures")
TRAIN_ROWS = {"digits": 96, "mnist5k": 75, "shapes": 50, "textures": 33}  # per dataset: different rounds


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """The pipeline's products on the 4 embedded tasks (random-init backbone, 2 fine-tuning steps per
    expert, one augmented view), cut to different train sizes per dataset so that combinations differ
    in rounds per epoch and in their short last batches (batch 16)."""
    from neulig.config import load
    from neulig.recipe import prepare
    from tests.conftest import FAST_RUN, compose

    overrides = [*FAST_RUN, f"data.datasets=[{','.join(EMBEDDED)}]", "data.sizes.train=96", "data.sizes.val=48",
                 "data.sizes.test=16", "model.finetune.batch_size=48", "merge.global_epochs=3", "merge.eval_every=1",
                 "merge.views=1", "merge.batch_size=16", "merge.lr=0.01"]
    config = load(compose(overrides, tmp_path_factory.mktemp("embedded")))
    return config, prepare(config)


def cut(combination, rows: dict[str, int]):
    """The combination with each dataset's train split cut to its first ``rows[d]`` images (clean
    features, every augmented view's features and the labels alike)."""
    from neulig.stages.features import SplitFeatures

    features, datasets = {}, {}
    for d in combination.names:
        f, n = combination.features[d], rows[d]
        full = len(f.train)
        views = None if f.train_views is None else \
            torch.cat([f.train_views[v * full : v * full + n] for v in range(len(f.train_views) // full)])
        features[d] = SplitFeatures(f.train[:n], f.val, f.test, train_views=views)
        datasets[d] = dataclasses.replace(combination.datasets[d], train=_Labels(combination.labels(d, "train")[:n]))
    return dataclasses.replace(combination, features=features, datasets=datasets)


@dataclasses.dataclass(frozen=True)
class _Labels:
    """A train split reduced to its labels: all that Portland's training reads of it."""

    labels: Tensor

    def __len__(self) -> int:
        return len(self.labels)


@pytest.mark.parametrize("k", [2, 3])
def test_embedded_combinations_trained_together_equal_alone(embedded, k):
    """Every k-combination of the 4 embedded tasks: ``methods.portland.build_module`` + a Lightning
    Trainer, one combination at a time (as ``methods.portland.run``), against all of them trained
    together, from the stacked features and from one float32 store of the run's features."""
    from neulig.lit.trainer import trainer_kwargs
    from neulig.methods.portland import build_module, combo_inputs, training_features

    config, products = embedded
    method, groups = config.merge, list(itertools.combinations(EMBEDDED, k))
    combinations = [cut(products.combination(g), TRAIN_ROWS) for g in groups]
    options = PortlandOptions.of(method, config.seed)
    combos = [combo_inputs(c, method.offsets_over) for c in combinations]
    stacked = fit_combinations(combos, stacked_sources(combinations, "train"), stacked_sources(combinations, "val"),
                               options)
    store_train = FeatureStore(EMBEDDED, {d: 2 * TRAIN_ROWS[d] for d in EMBEDDED}, combos[0].heads[0].shape[-1])
    store_val = products.features.stores["val"]
    everything = cut(products.combination(EMBEDDED), TRAIN_ROWS)
    for d in EMBEDDED:  # the train store from the cut features (one copy per expert and dataset)
        features, y = training_features(everything, d)
        for t, e in enumerate(EMBEDDED):
            store_train.put(e, d, features[:, t], y)
    from_store = fit_combinations(combos, store_train.sources(groups), store_val.sources(groups), options)
    moved = 0
    for c, combination in enumerate(combinations):
        L.seed_everything(config.seed, verbose=False)
        module = build_module(combination, method, config.seed)
        kwargs = trainer_kwargs(config.trainer)
        kwargs.update(max_epochs=method.global_epochs, use_distributed_sampler=False, num_sanity_val_steps=0,
                      enable_progress_bar=False)
        L.Trainer(**kwargs).fit(module)
        assert_same(module, stacked[c])
        assert_same(module, from_store[c])
        moved += module.best_epoch > 0
    assert moved  # at least one combination's best state is a trained one
