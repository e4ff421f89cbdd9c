"""The one Portland trainer (``neulig.portland.training``, arXiv 2503.01268, docs/neural_ligand.md §7):
a single combination equals a plain PyTorch loop (the reference's schedule, torch's Adam, the tested
loss); combinations trained together equal each trained alone (best state within 1e-5, same best
epoch, same history), from stacked tensors and from the run's store."""
from __future__ import annotations

import dataclasses
import itertools
import re

import lightning as L
import pytest
import torch
from torch import Tensor

from neulig.config.merge import PortlandMerge
from neulig.config.trainer import TrainerConfig
from neulig.errors import NeuligError
from neulig.evaluate import accuracy, ensemble_logits
from neulig.portland.features import FeatureStore, StackedSources
from neulig.portland.loss import loss_terms, portland_loss, regularizer, step_loss
from neulig.portland.model import Portland, batched_beta, initial_state
from neulig.portland.statistics import offset_statistics
from neulig.portland.training import ComboInputs, ensembled_accuracy, fit

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-5
CPU = TrainerConfig(accelerator="cpu", devices=1)
METHOD = PortlandMerge(name="portland", kind="trained", runner="neulig.portland.runner.run", loss="sup",
                       regularizer="reference", offsets_over="all", scaling=100.0, lr=0.01, views=0,
                       view_scale=[0.9, 1.0], batch_size=16, global_epochs=6, eval_every=2, merged_batch_size=128,
                       batch_weights="mean", eval_shuffle=True)


def method(**changes) -> PortlandMerge:
    return dataclasses.replace(METHOD, **changes)


# ---- the loss of a batch of combinations -----------------------------------------------------------


@pytest.mark.parametrize("loss,rule", [("sup", "reference"), ("semi", "exact"), ("sup", "variance"),
                                       ("semi", "fisher_variance")])
def test_batched_step_loss_is_each_combinations_portland_loss(loss, rule):
    """Three combinations whose heads have 3, 5 and 3 classes (two head groups), one with a short batch
    (4 real rows in 6)."""
    g = torch.Generator().manual_seed(1)
    t, d, b = 2, 5, 6
    classes = [3, 5, 3]
    heads = [torch.randn(k, d, generator=g) for k in classes]
    z = torch.randn(3, b, t, d, generator=g)
    y = torch.stack([torch.randint(0, k, (b,), generator=g) for k in classes])
    stats = [regularizer(rule).statistic(offset_statistics([{"w": r} for r in torch.randn(t, 7, generator=g)],
                                                           fishers=[{"w": r} for r in torch.rand(t, 7, generator=g)]))
             .float() for _ in range(3)]
    portlands = [Portland(t, d) for _ in range(3)]
    weight = torch.stack([p.linear.weight.detach() for p in portlands])
    bias = torch.stack([p.linear.bias.detach() for p in portlands])
    groups = [(torch.tensor([0, 2]), torch.stack([heads[0], heads[2]])), (torch.tensor([1]), heads[1][None])]
    lengths = torch.tensor([6.0, 4.0, 6.0])
    mask = (torch.arange(b) < lengths[:, None]).float()
    l_b, l_a = loss_terms(batched_beta(weight, bias, z), z, groups, y, loss, rule, torch.stack(stats))
    got = step_loss(l_b, l_a, mask, lengths, 100.0)
    for c in range(3):
        n = int(lengths[c])
        expected, _ = portland_loss(portlands[c](z[c, :n]), z[c, :n], y[c, :n], heads[c], loss, 100.0, rule, stats[c])
        torch.testing.assert_close(got[c], expected.detach(), rtol=1e-6, atol=1e-6)


def test_run_store_reads_what_stacking_reads_views_included():
    """The run's train store (clean rows then views, labels repeated) gives a combination what its
    stacked view gives, in the combination's expert order, rounded to float16 once."""
    from neulig.stages.features import RunFeatures

    g = torch.Generator().manual_seed(2)
    sizes, experts = {"a": 5, "b": 3}, ["a", "b"]
    run = RunFeatures(experts, {d: {"train": n, "val": 2, "test": 1} for d, n in sizes.items()}, 2, 4, torch.float16)
    for d, n in sizes.items():
        run.put_labels(d, {"train": torch.arange(n), "val": torch.zeros(2), "test": torch.zeros(1)})
        for e in experts:
            splits = {"train": torch.randn(n, 4, generator=g), "val": torch.randn(2, 4, generator=g), "test": torch.randn(1, 4)}
            run.put(e, d, splits, torch.randn(2 * n, 4, generator=g))
    sources = run.stores["train"].sources([("b", "a")], [("b", "a")])
    for j, d in enumerate(("b", "a")):
        stacked = run.stacked(["b", "a"], d)
        expected = torch.cat([stacked.train, stacked.train_views])
        assert expected.dtype == torch.float32 and expected.shape == (3 * sizes[d], 2, 4)
        rows = torch.arange(3 * sizes[d]).flip(0)
        torch.testing.assert_close(sources.gather(j, rows[None]), expected[rows][None], rtol=0, atol=0)
        assert torch.equal(sources.labels(0, j), torch.arange(sizes[d]).repeat(3))
    with pytest.raises(ValueError, match="labels of a: expected 15, got 5"):  # labels go through the store's check
        run.stores["train"].put_labels("a", torch.arange(5))


# ---- synthetic combinations ------------------------------------------------------------------------


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
    theta = {n: {"w": torch.randn(30, generator=g)} for n in SIZES}
    return heads, labels, feats, theta


def fishers(names) -> list[dict[str, Tensor]]:
    """A diagonal "Fisher" of each dataset's expert, for ``fisher_variance`` (positive, seeded by the name)."""
    return [{"w": torch.rand(30, generator=torch.Generator().manual_seed(sorted(SIZES).index(n))) + 0.1}
            for n in names]


def synthetic_inputs(groups, heads, labels, feats, theta, rounding: torch.dtype | None = None):
    """Each combination's inputs and stacked [N, T, d] train / val sets (features rounded to ``rounding``)."""
    def stack(group, n: str, i: int) -> Tensor:
        parts = [feats[(e, n)][i] for e in group]
        return torch.stack(parts if rounding is None else [p.to(rounding).float() for p in parts], 1)

    combos, train, val = [], [], []
    for group in groups:
        stats = offset_statistics([theta[n] for n in group], fishers=fishers(group))
        combos.append(ComboInputs(group, tuple(heads[n] for n in group), stats))
        train.append([(stack(group, n, 0), labels[n][0]) for n in group])
        val.append([(stack(group, n, 1), labels[n][1]) for n in group])
    return combos, train, val


def fit_stacked(combos, train, val, options: PortlandMerge, seed: int, level: str = "features"):
    return fit(combos, StackedSources(train), StackedSources(val), options, seed, level, CPU)


def plain_loop(combo: ComboInputs, train, val, options: PortlandMerge, seed: int, level: str = "features"):
    """The reference's schedule written out plainly (docs/neural_ligand.md §7): one Portland, torch's Adam,
    per epoch e one ``randperm`` per dataset from a generator seeded seed * 100003 + e, min_k ceil(n_k / B)
    rounds of one step per dataset, evaluation at 0, every eval_every epochs and the last; best: strictly
    greater mean validation ensembled accuracy."""
    statistic = regularizer(options.regularizer).statistic(combo.stats).float()
    portland = Portland(len(combo.names), DIM)
    portland.load_state_dict(initial_state(len(combo.names), DIM, seed))
    optimizer = torch.optim.Adam(portland.parameters(), lr=options.lr)
    b = options.batch_size

    @torch.no_grad()
    def validate() -> float:
        accs = [accuracy(ensemble_logits(z, head, portland(z), level), y) for (z, y), head in zip(val, combo.heads)]
        return sum(accs) / len(accs)

    best, history = (-1.0, -1, None), []

    def record(epoch: int, loss: float) -> None:
        nonlocal best
        acc = validate()
        history.append({"epoch": epoch, "train/loss": loss, "val/ensembled_avg": acc})
        if acc > best[0]:
            best = (acc, epoch, {k: v.clone() for k, v in portland.state_dict().items()})

    record(0, float("nan"))
    for epoch in range(options.global_epochs):
        generator = torch.Generator().manual_seed(seed * 100003 + epoch)
        orders = [torch.randperm(len(y), generator=generator) for _, y in train]
        rounds = min((len(o) + b - 1) // b for o in orders)
        losses = []
        for r in range(rounds):
            for (z, y), head, order in zip(train, combo.heads, orders):
                index = order[r * b : (r + 1) * b]
                loss, _ = portland_loss(portland(z[index]), z[index], y[index], head, options.loss, options.scaling,
                                        options.regularizer, statistic)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
        if (epoch + 1) % options.eval_every == 0 or epoch + 1 == options.global_epochs:
            record(epoch + 1, sum(losses) / len(losses))
    return best, history


def assert_same(expected, fit_result, tol: float = TOL) -> None:
    """``fit_result`` equals ``expected`` (a fit, or a plain loop's (best, history)): best state within
    ``tol``, best epoch, history (epochs exactly, accuracies and losses within ``tol``)."""
    if isinstance(expected, tuple):
        (best_acc, best_epoch, state), history = expected
    else:
        best_acc, best_epoch, state, history = expected.best_val_acc, expected.best_epoch, expected.state, expected.history
    assert fit_result.best_epoch == best_epoch, fit_result.names
    assert fit_result.best_val_acc == pytest.approx(best_acc, abs=tol)
    for key, value in state.items():
        torch.testing.assert_close(fit_result.state[key], value, rtol=0, atol=tol, msg=f"{fit_result.names} {key}")
    assert [h["epoch"] for h in fit_result.history] == [h["epoch"] for h in history]
    for mine, theirs in zip(fit_result.history, history):
        assert mine["val/ensembled_avg"] == pytest.approx(theirs["val/ensembled_avg"], abs=tol)
        assert mine["train/loss"] == pytest.approx(theirs["train/loss"], abs=tol, nan_ok=True)


@pytest.mark.parametrize("loss,rule,level", [("sup", "reference", "features"), ("semi", "exact", "logits"),
                                             ("sup", "fisher_variance", "features")])
def test_one_combination_is_the_plain_loop(loss, rule, level):
    """C = 1: the trainer equals the reference's loop on the same features, epoch selection at ``level``."""
    heads, labels, feats, theta = synthetic()
    options = method(loss=loss, regularizer=rule)
    combos, train, val = synthetic_inputs([("a", "b", "c")], heads, labels, feats, theta)
    [result] = fit_stacked(combos, train, val, options, seed=3, level=level)
    assert result.best_epoch > 0  # the comparison is not of the initial state alone
    assert_same(plain_loop(combos[0], train[0], val[0], options, 3, level), result)


@pytest.mark.parametrize("loss,rule", [("sup", "reference"), ("semi", "exact"), ("sup", "fisher_variance")])
def test_synthetic_combinations_trained_together_equal_alone(loss, rule):
    """All 6 pairs of 4 datasets of different sizes (rounds 2..5 per epoch, short last batches) and
    class counts, from stacked tensors and from a float32 store."""
    heads, labels, feats, theta = synthetic()
    options = method(loss=loss, regularizer=rule)
    groups = list(itertools.combinations(SIZES, 2))
    combos, train, val = synthetic_inputs(groups, heads, labels, feats, theta)
    stacked = fit_stacked(combos, train, val, options, seed=3)
    stores = [FeatureStore(list(SIZES), sizes, DIM) for sizes in (SIZES, VAL)]
    for (e, n), parts in feats.items():
        for store, part, y in zip(stores, parts, labels[n]):
            store.put(e, n, part, y)
    from_store = fit(combos, stores[0].sources(groups, groups), stores[1].sources(groups, groups), options, 3,
                     "features", CPU)
    assert any(f.best_epoch > 0 for f in stacked)
    accuracy_now = ensembled_accuracy(combos, [f.state for f in stacked], stores[1].sources(groups, groups), "features")
    for c in range(len(groups)):
        [alone] = fit_stacked([combos[c]], [train[c]], [val[c]], options, seed=3)
        assert_same(alone, stacked[c])
        assert_same(alone, from_store[c])
        assert sum(accuracy_now[c].values()) / 2 == pytest.approx(alone.best_val_acc, abs=TOL)  # the best state's


def test_float16_store_equals_alone_on_the_rounded_features():
    """A float16 store computes in float32: as training alone on the features rounded to float16."""
    heads, labels, feats, theta = synthetic(seed=4)
    options = method(global_epochs=4, eval_every=1)
    groups = list(itertools.combinations(SIZES, 3))
    combos, train, val = synthetic_inputs(groups, heads, labels, feats, theta, rounding=torch.float16)
    stores = [FeatureStore(list(SIZES), sizes, DIM, torch.float16) for sizes in (SIZES, VAL)]
    for (e, n), parts in feats.items():
        for store, part, y in zip(stores, parts, labels[n]):
            store.put(e, n, part, y)
    fits = fit(combos, stores[0].sources(groups, groups), stores[1].sources(groups, groups), options, 0, "features", CPU)
    for c in range(len(groups)):
        [alone] = fit_stacked([combos[c]], [train[c]], [val[c]], options, seed=0)
        assert_same(alone, fits[c])


def test_a_non_finite_loss_names_the_combination_and_the_step_of_training_alone():
    heads, labels, feats, theta = synthetic(seed=5)
    feats[("c", "c")][0][11] = float("nan")  # one train row of dataset c, seen by combinations holding c
    options = method(global_epochs=2)
    groups = list(itertools.combinations(SIZES, 2))
    combos, train, val = synthetic_inputs(groups, heads, labels, feats, theta)
    with pytest.raises(NeuligError, match=r"at epoch 1, step \d+ of combination a,c") as together:
        fit_stacked(combos, train, val, options, seed=0)
    c = groups.index(("a", "c"))
    with pytest.raises(NeuligError, match=r"lower merge.lr") as alone:
        fit_stacked([combos[c]], [train[c]], [val[c]], options, seed=0)
    step = re.compile(r"step (\d+)")
    assert step.search(str(together.value)).group(1) == step.search(str(alone.value)).group(1)


def test_the_initial_state_is_portland_after_seed_everything():
    L.seed_everything(7, verbose=False)
    expected = Portland(3, 4).state_dict()
    state = initial_state(3, 4, seed=7)
    assert all(torch.equal(state[k], expected[k]) for k in expected)


def test_the_trainer_drives_callbacks_once_per_global_epoch_for_many_combinations():
    """Lightning runs it: a callback sees one step per global epoch and the mean curve of the combinations."""
    heads, labels, feats, theta = synthetic(seed=6)
    options = method(global_epochs=3, eval_every=1)
    groups = list(itertools.combinations(SIZES, 2))[:3]
    combos, train, val = synthetic_inputs(groups, heads, labels, feats, theta)
    seen = []

    class Spy(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            seen.append((module.history[-1]["epoch"], module.history[-1]["val/ensembled_avg"]))

    fits = fit(combos, StackedSources(train), StackedSources(val), options, 0, "features", CPU, [Spy()])
    assert [epoch for epoch, _ in seen] == [1, 2, 3]
    for epoch, value in seen:
        assert value == pytest.approx(sum(f.history[epoch]["val/ensembled_avg"] for f in fits) / len(fits))
