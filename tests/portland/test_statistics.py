"""The offset statistics streamed over parameters (``portland.statistics``) equal the stacked [T, P]
float64 definition to 1e-12 relative, for every combination of a run's experts from one pass."""
import itertools

import pytest
import torch

from neulig.portland.statistics import entry_keys, offset_moments, offset_statistics


def stacked_definition(states, over):
    """eps* and G from the stacked [T, P] float64 matrix (the formula of arXiv 2503.01268's code)."""
    keys = entry_keys(states[0], over)
    theta = torch.stack([torch.cat([s[k].double().flatten() for k in keys]) for s in states])
    offsets = theta - theta.mean(0, keepdim=True)
    sums = offsets.sum(1)
    return (sums - sums.mean()) / sums.std(unbiased=True), offsets @ offsets.t()


def experts(count=5, seed=0):
    """Fine-tuned-like experts: one shared base plus small offsets, an int buffer and float16 entries."""
    g = torch.Generator().manual_seed(seed)
    base = {"a.weight": torch.randn(37, 11, generator=g), "b.bias": torch.randn(301, generator=g),
            "c.half": torch.randn(64, generator=g).half()}
    out = {}
    for e in range(count):
        state = {k: (v.float() + 1e-3 * torch.randn(v.shape, generator=g)).to(v.dtype) for k, v in base.items()}
        state["n.num_batches_tracked"] = torch.tensor(e * 7)
        out[f"e{e}"] = state
    return out


def assert_relative(got, expected, rtol=1e-12):
    assert got.dtype == torch.float64
    scale = expected.abs().max()
    assert float((got - expected).abs().max() / scale) <= rtol, (got, expected)


@pytest.mark.parametrize("over", ["all", "params"])
def test_every_combination_from_one_streamed_pass_equals_the_stacked_definition(over):
    states = experts()
    moments = offset_moments(states, over, chunk=97)  # chunks that cut through entries
    for k in (2, 3, 5):
        for group in itertools.combinations(states, k):
            eps_star, gram = stacked_definition([states[e] for e in group], over)
            stats = moments.of(group)
            assert_relative(stats.eps_star, eps_star)
            assert_relative(stats.gram, gram)


def fisher_gram_definition(states, fishers, over):
    """G^F_uv = sum_p Fbar_p eps_u,p eps_v,p, Fbar the mean of the combination's Fishers (0 where they have no entry)."""
    keys = entry_keys(states[0], over)
    theta = torch.stack([torch.cat([s[k].double().flatten() for k in keys]) for s in states])
    fbar = torch.stack([torch.cat([f[k].double().flatten() if k in f else torch.zeros(s[k].numel(), dtype=torch.float64)
                                   for k in keys]) for f, s in zip(fishers, states)]).mean(0)
    offsets = theta - theta.mean(0, keepdim=True)
    return (offsets * fbar) @ offsets.t()


@pytest.mark.parametrize("over", ["all", "params"])
def test_every_combinations_fisher_gram_from_one_streamed_pass(over):
    states = experts()
    g = torch.Generator().manual_seed(5)
    fishers = {e: {k: torch.rand(v.shape, generator=g) for k, v in s.items() if k != "b.bias" and v.is_floating_point()}
               for e, s in states.items()}  # b.bias and the int buffer: no Fisher entry, weight 0
    moments = offset_moments(states, over, chunk=97, fishers=fishers)
    for k in (2, 3, 5):
        for group in itertools.combinations(states, k):
            expected = fisher_gram_definition([states[e] for e in group], [fishers[e] for e in group], over)
            assert_relative(moments.of(group).fisher_gram, expected)
    assert offset_moments(states, over).of(["e0", "e1"]).fisher_gram is None
    with pytest.raises(ValueError, match="shape"):
        offset_moments(states, over, fishers={e: {"a.weight": torch.ones(3)} for e in states})


def test_order_of_the_combination_is_the_order_of_its_statistics():
    states = experts(3, seed=1)
    forward, backward = offset_moments(states, "all").of(["e0", "e2"]), offset_moments(states, "all").of(["e2", "e0"])
    torch.testing.assert_close(forward.eps_star.flip(0), backward.eps_star, rtol=0, atol=0)
    torch.testing.assert_close(forward.gram.flip(0, 1), backward.gram, rtol=0, atol=0)


def test_one_combination_by_position():
    states = experts(3, seed=2)
    eps_star, gram = stacked_definition(list(states.values()), "all")
    stats = offset_statistics(list(states.values()), "all")
    assert_relative(stats.eps_star, eps_star)
    assert_relative(stats.gram, gram)
    with pytest.raises(ValueError, match="offsets_over"):
        offset_statistics(list(states.values()), "some")
