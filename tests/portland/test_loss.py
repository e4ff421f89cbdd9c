"""Portland forward, CoopVec, L_a (reference and exact) and L_b against hand-computed values: the one
loss (``neulig.portland.loss``) every training of one or many combinations uses.

Setup: T = 2 experts, d = 2. z_1 = [1, 0], z_2 = [0, 1]; Portland W maps [z_1; z_2] = [1, 0, 0, 1]
to logits [1, 2], so beta = softmax([1, 2]) = [0.268941, 0.731059]. The head is 10 * I (2 classes).
Checkpoints theta_1 = [0, 0], theta_2 = [1, 1]: offsets -/+[0.5, 0.5], sums -/+1, eps* = -/+0.707107,
Gram [[0.5, -0.5], [-0.5, 0.5]] (normalised by its mean diagonal: [[1, -1], [-1, 1]]).
"""
import pytest
import torch

from neulig.models.heads import head_logits
from neulig.portland.loss import REGULARIZERS, loss_terms, normalized_gram, portland_loss
from neulig.portland.model import Portland, ensemble_features
from neulig.portland.statistics import offset_statistics

BETA = torch.tensor([[0.2689414213699951, 0.7310585786300049]])


def loss_sums(beta, features, head, labels, loss, regularizer, statistic):
    """L_b and L_a summed over one dataset-pure batch of one combination (``loss_terms`` with A = 1)."""
    groups = [(torch.tensor([0]), head[None])]
    l_b, l_a = loss_terms(beta[None], features[None], groups, None if labels is None else labels[None], loss,
                          regularizer, statistic[None])
    return l_b.sum(), l_a.sum()


def eps_and_gram(theta):
    stats = offset_statistics([{"w": row} for row in theta])
    return stats.eps_star.float(), stats.gram.float()


@pytest.fixture
def setup():
    portland = Portland(num_experts=2, feature_dim=2)
    with torch.no_grad():
        portland.linear.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 2.0]]))
        portland.linear.bias.zero_()
    features = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # [B=1, T=2, d=2]
    head = 10 * torch.eye(2)
    theta = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    return portland, features, head, theta


def test_parameter_count_is_d_T_squared_plus_T():
    assert sum(p.numel() for p in Portland(5, 512).parameters()) == 12805  # docs/neural_ligand.md §2, ViT-B/32, T = 5


def test_coopvec_and_ensemble(setup):
    portland, features, head, _ = setup
    beta = portland(features)
    torch.testing.assert_close(beta, BETA)
    torch.testing.assert_close(ensemble_features(beta, features), BETA)
    torch.testing.assert_close(head_logits(ensemble_features(beta, features), head),
                               torch.tensor([[3.4525776171161966, 9.38507899795139]]))


def test_offset_statistics(setup):
    *_, theta = setup
    eps_star, gram = eps_and_gram(theta)
    torch.testing.assert_close(eps_star, torch.tensor([-0.7071067811865476, 0.7071067811865476]))
    torch.testing.assert_close(gram, torch.tensor([[0.5, -0.5], [-0.5, 0.5]]))


def l_a(beta, regularizer, statistic):
    """L_a alone: the sup term is computed on a dummy batch and discarded."""
    features = torch.zeros(beta.shape[0], beta.shape[1], 2)
    return loss_sums(beta, features, torch.eye(2), torch.zeros(beta.shape[0], dtype=torch.long), "sup", regularizer,
                     statistic)[1] / beta.shape[0]


def test_consistency_losses(setup):
    *_, theta = setup
    eps_star, gram = eps_and_gram(theta)
    torch.testing.assert_close(l_a(BETA, "reference", eps_star), torch.tensor(0.10677613351703626))
    torch.testing.assert_close(normalized_gram(gram), torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))
    torch.testing.assert_close(l_a(BETA, "exact", normalized_gram(gram)), torch.tensor(0.21355226703407262))
    # uniform CoopVec satisfies the weighted-offset constraint exactly (arXiv 2503.01268 §3)
    uniform = torch.full((1, 2), 0.5)
    assert l_a(uniform, "reference", eps_star).item() == pytest.approx(0.0, abs=1e-12)


def test_sup_and_semi_terms(setup):
    portland, features, head, theta = setup
    eps_star, _ = eps_and_gram(theta)
    beta = portland(features)
    sup, _ = loss_sums(beta, features, head, torch.tensor([0]), "sup", "reference", eps_star)
    semi, _ = loss_sums(beta, features, head, None, "semi", "reference", eps_star)
    torch.testing.assert_close(sup, torch.tensor(5.935149711333068))
    torch.testing.assert_close(semi, torch.tensor(0.018336769119009624))
    with pytest.raises(ValueError, match="loss"):
        loss_sums(beta, features, head, None, "other", "reference", eps_star)


def test_total_loss_is_lb_plus_la_over_scaling(setup):
    portland, features, head, theta = setup
    eps_star, _ = eps_and_gram(theta)
    loss, parts = portland_loss(portland(features), features, torch.tensor([0]), head, "sup", 100.0, "reference", eps_star)
    torch.testing.assert_close(loss, torch.tensor(5.935149711333068 + 0.10677613351703626 / 100))
    loss.backward()
    assert portland.linear.weight.grad.abs().sum() > 0


def test_batch_terms_are_sums_over_samples(setup):
    """Doubling a batch doubles both sums and leaves the mean loss unchanged (what DDP's split relies on)."""
    portland, features, head, theta = setup
    eps_star, _ = eps_and_gram(theta)
    beta = portland(features)
    one = loss_sums(beta, features, head, torch.tensor([0]), "sup", "reference", eps_star)
    two = loss_sums(beta.repeat(2, 1), features.repeat(2, 1, 1), head, torch.tensor([0, 0]), "sup", "reference",
                    eps_star)
    for a, b in zip(one, two):
        torch.testing.assert_close(2 * a, b)


def test_each_regularizer_reads_its_statistic():
    """``reference`` reads eps*, ``exact`` the Gram matrix over its mean diagonal (one entry each)."""
    stats = offset_statistics([{"w": torch.tensor([0.0, 0.0])}, {"w": torch.tensor([1.0, 1.0])}])
    torch.testing.assert_close(REGULARIZERS["reference"].statistic(stats), stats.eps_star)
    torch.testing.assert_close(REGULARIZERS["exact"].statistic(stats), normalized_gram(stats.gram))
    with pytest.raises(ValueError, match="regularizer"):
        loss_terms(BETA[None], torch.zeros(1, 1, 2, 2), [(torch.tensor([0]), torch.eye(2)[None])], None, "semi",
                   "other", stats.eps_star[None])
