"""The ``variance`` and ``fisher_variance`` regularisers (docs/neural_ligand.md §13) against hand-computed
values, and the identity they rest on: on a quadratic model the merge-versus-ensemble gap is exactly
-1/2 sum_t beta_t (theta_t - theta_beta)^T H (theta_t - theta_beta), which is -c/2 Var_beta(theta) for
H = c I and -1/2 Var^F_beta(theta) for H = diag(F).
"""
import pytest
import torch

from neulig.portland.loss import REGULARIZERS, beta_variance, loss_terms, normalized_gram, quadratic_form
from neulig.portland.statistics import offset_statistics


def variance_of(beta: list[float], thetas: list[list[float]], normalise: bool = True,
                fishers: list[list[float]] | None = None) -> float:
    """The regulariser's value for one CoopVec, computed from the pipeline's own offset statistics (in the
    metric of the experts' mean Fisher when ``fishers`` are given: ``fisher_variance``)."""
    def states(rows):
        return [{"w": torch.tensor(t, dtype=torch.float64)} for t in rows]

    stats = offset_statistics(states(thetas), fishers=None if fishers is None else states(fishers))
    name = "variance" if fishers is None else "fisher_variance"
    gram = REGULARIZERS[name].statistic(stats) if normalise else (stats.gram if fishers is None else stats.fisher_gram)
    return float(REGULARIZERS[name].term(torch.tensor([[beta]], dtype=torch.float64), gram[None]))


@pytest.mark.parametrize("b", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_two_experts_variance_is_4b_one_minus_b(b):
    # theta_1 = (0, 0), theta_2 = (2, 0): offsets from the mean -/+(1, 0), G = [[1, -1], [-1, 1]] (mean diagonal 1);
    # theta_beta = (2(1 - b), 0), so Var = b * 4(1 - b)^2 + (1 - b) * 4 b^2 = 4 b (1 - b)
    assert variance_of([b, 1 - b], [[0.0, 0.0], [2.0, 0.0]]) == pytest.approx(4 * b * (1 - b), abs=1e-12)


def test_three_unit_experts():
    # theta_t = e_t in R^3: G = I - 11^T/3, mean diagonal 2/3; Var = 1 - ||beta||^2, normalised 1.5 (1 - ||beta||^2)
    thetas = [[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]
    assert variance_of([0.5, 0.3, 0.2], thetas) == pytest.approx(1.5 * (1 - 0.38), abs=1e-12)
    assert variance_of([0.5, 0.3, 0.2], thetas, normalise=False) == pytest.approx(1 - 0.38, abs=1e-12)
    assert variance_of([1 / 3] * 3, thetas) == pytest.approx(1.0, abs=1e-12)  # 1 at uniform beta: scale-free
    assert variance_of([0.0, 1.0, 0.0], thetas) == pytest.approx(0.0, abs=1e-12)  # 0 at a vertex


THREE_UNIT = [[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]
FISHERS = [[2.0, 2.0, 3.0], [0.0, 2.0, 3.0], [1.0, 2.0, 3.0]]  # mean diag(1, 2, 3): the combination's Fisher


def test_fisher_variance_of_three_unit_experts():
    # theta_t = e_t, Fbar = (1, 2, 3): theta_beta = beta, so Var^F = sum_t beta_t [F_t (1 - beta_t)^2 + sum_{p != t} F_p beta_p^2]
    # = sum_t F_t beta_t (1 - beta_t); at beta (0.5, 0.3, 0.2): 0.25 + 0.42 + 0.48 = 1.15. G^F's mean diagonal is
    # 2 sum F / 9 = 4/3 (its value at uniform beta), so the regulariser is 1.15 / (4/3) = 0.8625
    beta = [0.5, 0.3, 0.2]
    assert variance_of(beta, THREE_UNIT, normalise=False, fishers=FISHERS) == pytest.approx(1.15, abs=1e-12)
    assert variance_of(beta, THREE_UNIT, fishers=FISHERS) == pytest.approx(0.8625, abs=1e-12)
    assert variance_of([1 / 3] * 3, THREE_UNIT, fishers=FISHERS) == pytest.approx(1.0, abs=1e-12)
    assert variance_of([0.0, 0.0, 1.0], THREE_UNIT, fishers=FISHERS) == pytest.approx(0.0, abs=1e-12)
    # the isotropic variance weighs the three directions alike: a different value at the same beta
    assert variance_of(beta, THREE_UNIT) == pytest.approx(1.5 * (1 - 0.38), abs=1e-12)


def test_fisher_variance_of_two_experts_ignores_directions_without_curvature():
    # theta_1 = (0, 0), theta_2 = (2, 6), Fbar = (1, 0): the second coordinate, however far apart, has no
    # curvature; Var^F = b * 4 (1 - b)^2 + (1 - b) * 4 b^2 = 4 b (1 - b), as two experts at distance 2
    for b in (0.0, 0.3, 0.5, 1.0):
        got = variance_of([b, 1 - b], [[0.0, 0.0], [2.0, 6.0]], normalise=False, fishers=[[0.5, 0.0], [1.5, 0.0]])
        assert got == pytest.approx(4 * b * (1 - b), abs=1e-12)


def test_fisher_variance_needs_the_fishers():
    stats = offset_statistics([{"w": torch.zeros(2)}, {"w": torch.ones(2)}])
    assert REGULARIZERS["fisher_variance"].reads_fisher and not REGULARIZERS["variance"].reads_fisher
    with pytest.raises(ValueError, match="Fishers"):
        REGULARIZERS["fisher_variance"].statistic(stats)


def test_variance_plus_exact_is_the_spread_about_the_mean():
    # beta . diag(G) = Var_beta + ||theta_beta - mean||^2: `variance` and `exact` split the same spread
    torch.manual_seed(0)
    thetas = torch.randn(4, 7, dtype=torch.float64)
    gram = offset_statistics([{"w": t} for t in thetas]).gram[None]
    beta = torch.softmax(torch.randn(1, 5, 4, dtype=torch.float64), -1)
    spread = torch.einsum("abt,at->ab", beta, gram.diagonal(dim1=-2, dim2=-1))
    torch.testing.assert_close(beta_variance(beta, gram) + quadratic_form(beta, gram), spread)
    merged = beta[0] @ thetas  # [B, P]
    direct = (beta[0][:, :, None] * (thetas[None] - merged[:, None]) ** 2).sum((1, 2))
    torch.testing.assert_close(beta_variance(beta, gram)[0], direct)


def test_second_order_gap_on_a_quadratic_model_is_exact():
    """f(theta) = 1/2 theta^T A theta + b^T theta + c: f(theta_beta) - sum_t beta_t f(theta_t) equals
    -1/2 sum_t beta_t delta_t^T A delta_t (the first-order terms cancel), and -c/2 Var_beta for A = c I."""
    torch.manual_seed(1)
    p, t = 6, 3
    thetas = torch.randn(t, p, dtype=torch.float64)
    beta = torch.softmax(torch.randn(t, dtype=torch.float64), 0)
    merged = beta @ thetas
    b, c0 = torch.randn(p, dtype=torch.float64), 0.7
    root = torch.randn(p, p, dtype=torch.float64)
    for curvature in (root @ root.t(), 2.5 * torch.eye(p, dtype=torch.float64)):
        def f(theta, a=curvature):
            return 0.5 * theta @ a @ theta + b @ theta + c0

        gap = f(merged) - sum(beta[i] * f(thetas[i]) for i in range(t))
        deltas = thetas - merged
        assert float(gap) == pytest.approx(float(-0.5 * sum(beta[i] * deltas[i] @ curvature @ deltas[i] for i in range(t))),
                                           rel=1e-10)
    gram = offset_statistics([{"w": row} for row in thetas]).gram
    variance = beta_variance(beta[None, None], gram[None]).item()
    assert float(gap) == pytest.approx(-0.5 * 2.5 * variance, rel=1e-10)  # the last curvature: A = 2.5 I


def test_fisher_variance_is_the_second_order_gap_under_diagonal_curvature():
    """With H = diag(F), F the mean of the experts' Fishers, the gap is exactly -1/2 Var^F_beta."""
    torch.manual_seed(2)
    p, t = 9, 4
    thetas = torch.randn(t, p, dtype=torch.float64)
    fishers = torch.rand(t, p, dtype=torch.float64) * 3
    beta = torch.softmax(torch.randn(t, dtype=torch.float64), 0)
    b, curvature = torch.randn(p, dtype=torch.float64), torch.diag(fishers.mean(0))

    def f(theta):
        return 0.5 * theta @ curvature @ theta + b @ theta - 0.3

    gap = f(beta @ thetas) - sum(beta[i] * f(thetas[i]) for i in range(t))
    stats = offset_statistics([{"w": row} for row in thetas], fishers=[{"w": row} for row in fishers])
    variance = beta_variance(beta[None, None], stats.fisher_gram[None]).item()
    assert float(gap) == pytest.approx(-0.5 * variance, rel=1e-10)


def test_variance_pushes_beta_to_a_vertex_where_exact_pushes_it_to_the_centre():
    thetas = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    gram = normalized_gram(offset_statistics([{"w": row} for row in thetas]).gram.float())[None]
    logits = torch.tensor([[[0.3, -0.2]]], requires_grad=True)
    for name, moves_apart in (("variance", True), ("exact", False)):
        rule = REGULARIZERS[name]
        value = rule.term(torch.softmax(logits, -1), gram)
        (grad,) = torch.autograd.grad(value.sum(), logits)
        step = logits.detach() - grad  # one gradient step on L_a alone
        spread_before = (logits[0, 0, 0] - logits[0, 0, 1]).abs().item()
        spread_after = (step[0, 0, 0] - step[0, 0, 1]).abs().item()
        assert (spread_after > spread_before) is moves_apart, name


def test_variance_is_a_term_of_the_one_loss():
    features = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    beta = torch.tensor([[0.25, 0.75]])
    thetas = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    gram = normalized_gram(offset_statistics([{"w": row} for row in thetas]).gram.float())
    groups = [(torch.tensor([0]), 10 * torch.eye(2)[None])]
    _, l_a = loss_terms(beta[None], features[None], groups, torch.tensor([[1]]), "sup", "variance", gram[None])
    assert l_a.item() == pytest.approx(4 * 0.25 * 0.75, abs=1e-6)


def test_routing_diagnostics_by_hand():
    from neulig.portland.evaluation import routing_diagnostics

    # two datasets, expert t belongs to dataset t; experts theta_1 = (0, 0), theta_2 = (2, 0) (normalised G as above)
    gram = offset_statistics([{"w": torch.tensor([0.0, 0.0])}, {"w": torch.tensor([2.0, 0.0])}]).gram
    betas = {"a": torch.tensor([[0.9, 0.1], [0.7, 0.3]]), "b": torch.tensor([[0.5, 0.5], [0.5, 0.5]])}
    out = routing_diagnostics(betas, ("a", "b"), gram)
    assert out["beta/own_weight/a"] == pytest.approx(0.8) and out["beta/own_weight/b"] == pytest.approx(0.5)
    assert out["beta/spread/a"] == pytest.approx(4 * 0.8 * 0.2)  # at the mean beta (0.8, 0.2): 4 b (1 - b)
    assert out["beta/spread/b"] == pytest.approx(1.0)  # uniform: the whole spread
    assert out["beta/entropy/b"] == pytest.approx(float(torch.log(torch.tensor(2.0))))
    assert out["beta/own_weight/avg"] == pytest.approx(0.65) and out["beta/spread/avg"] == pytest.approx((0.64 + 1) / 2)
    assert not any(k.startswith("beta/spread") for k in routing_diagnostics(betas, ("a", "b"), None))
