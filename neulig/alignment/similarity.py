"""Unit similarities between a reference model A and another model B (MuDSC, arXiv 2403.01753).

Weight space. The features of unit i of a group are everything the unit owns: for every slot of the
group (BatchNorm running statistics excluded), the slice of the tensor at index i along the slot's
axis, after B's *current* permutations of the other groups have been applied on the other axes
(so both models' features are expressed in A's unit order), flattened and concatenated:
F_A, F_B in R^{n x D}. S_w[i, j] = sim(F_A[i], F_B[j]).

Activation space. Over the same unlabeled images, a_i and b_j are the activations of unit i of A and
unit j of B, with the samples (images x positions) paired. From batch-size weighted running moments,
    S_act[i, j] = (E[a_i b_j] - E[a_i] E[b_j]) / max(sigma(a_i) sigma(b_j), 1e-7)      (Pearson)
    S_act[i, j] = E[a_i b_j] / max(sqrt(E[a_i^2] E[b_j^2]), 1e-7)                    (cosine)
A group with several probe sites (e.g. the residual stream at every block) averages the sites'
matrices.

Dual-space blend: S = f * S_w + (1 - f) * S_act, with f the weight-space share (``fix_rate``,
default 0.5). f = 1 is weight matching (Git Re-Basin, arXiv 2209.04836, with a correlation in place
of the inner product); f = 0 is activation matching (ZipIt!-style correlation alone).
"""
from __future__ import annotations

import torch
from torch import Tensor

from neulig.alignment.permute import Permutation, axis_indices
from neulig.alignment.spec import Group, PermutationSpec
from neulig.errors import NeuligError
from neulig.merging.state_dict import StateDict

MEASURES = ("pearson", "cosine")
EPS = 1e-7


def check_measure(measure: str) -> None:
    if measure not in MEASURES:
        raise NeuligError(f"unknown similarity {measure!r}; choose one of {', '.join(MEASURES)}")


def normalized_rows(x: Tensor, measure: str = "pearson") -> Tensor:
    """Rows scaled so that ``normalized_rows(x) @ normalized_rows(y).T`` is the similarity matrix.

    Pearson centres each row by its own mean first. A row with zero norm stays zero (similarity 0).
    """
    check_measure(measure)
    x = x.float()
    if measure == "pearson":
        x = x - x.mean(dim=1, keepdim=True)
    return x / x.norm(dim=1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)


def cross_similarity(x: Tensor, y: Tensor, measure: str = "pearson") -> Tensor:
    """[n, D] and [m, D] -> [n, m] similarity of every row of ``x`` with every row of ``y``."""
    return normalized_rows(x, measure) @ normalized_rows(y, measure).T


def blend(s_weight: Tensor | None, s_act: Tensor | None, fix_rate: float) -> Tensor:
    """S = f * S_w + (1 - f) * S_act; at f = 1 (f = 0) only S_w (S_act) is needed."""
    if fix_rate == 1.0 and s_weight is not None:
        return s_weight
    if fix_rate == 0.0 and s_act is not None:
        return s_act
    if s_weight is None or s_act is None:
        raise NeuligError(f"blend with fix_rate={fix_rate} needs both the weight and the activation similarity")
    return torch.add(s_weight * fix_rate, s_act, alpha=1.0 - fix_rate)


def weight_pieces(state: StateDict, spec: PermutationSpec, group: Group, perm: Permutation | None) -> list[Tensor]:
    """The [n, d_m] pieces of F, one per slot of ``group`` (BatchNorm statistics left out), in float32.

    ``perm`` (``None``: the identity, for the reference) is applied on every axis but the slot's own.
    """
    pieces = []
    for slot in group.slots:
        if not slot.in_similarity:
            continue
        t = state[slot.key]
        moves = {} if perm is None else axis_indices(spec, slot.key, tuple(t.shape), perm, skip_axis=slot.axis)
        t = t.narrow(slot.axis, slot.start, group.size).float()
        for axis, index in moves.items():
            t = t.index_select(axis, index.to(t.device))
        pieces.append(t.movedim(slot.axis, 0).reshape(group.size, -1))
    return pieces


def weight_features(state: StateDict, spec: PermutationSpec, group: Group, perm: Permutation | None) -> Tensor:
    """F in R^{n x D}: each unit's slices of the group's tensors, other axes permuted by ``perm``."""
    return torch.cat(weight_pieces(state, spec, group, perm), dim=1)


class WeightSimilarity:
    """S_w of every group against a fixed reference, caching the reference's normalised features.

    The other model's features are never concatenated or normalised: since every normalised reference
    row is centred (Pearson), F_A_hat . (F_B[j] - mean_j) = F_A_hat . F_B[j], so
    S_w[:, j] = sum over slots of F_A_hat[:, slot] F_B[j, slot]^T, divided by the centred norm of F_B[j]
    (from running sums of F_B[j] and of its squares).
    """

    def __init__(self, reference: StateDict, spec: PermutationSpec, measure: str = "pearson"):
        check_measure(measure)
        self.reference, self.spec, self.measure = reference, spec, measure
        self._ref: dict[str, Tensor] = {}

    def __call__(self, other: StateDict, name: str, perm: Permutation) -> Tensor:
        group = self.spec.group(name)
        if name not in self._ref:
            self._ref[name] = normalized_rows(weight_features(self.reference, self.spec, group, None), self.measure)
        ref = self._ref[name]
        score = torch.zeros(group.size, group.size, device=ref.device)
        total = torch.zeros(group.size, dtype=torch.float64, device=ref.device)
        squares = torch.zeros_like(total)
        col = 0
        for piece in weight_pieces(other, self.spec, group, perm):
            piece = piece.to(ref.device)
            score.addmm_(ref[:, col:col + piece.shape[1]], piece.T)
            total += piece.sum(1).double()
            squares += torch.linalg.vector_norm(piece, dim=1).double() ** 2
            col += piece.shape[1]
        if self.measure == "pearson":
            squares = squares - total**2 / col
        norm = squares.clamp_min(0).sqrt()
        scale = torch.where(squares > 1e-12 * squares.max().clamp_min(1e-30), 1 / norm, 0)  # constant row: 0
        return score * scale.float()[None, :]


class CrossMoments:
    """Running moments of paired activations a [n, s] (model A) and b [n, s] (model B).

    Samples are shifted by the first batch's means before accumulating (the covariance does not
    change, and the shift removes the cancellation E[ab] - E[a]E[b] would suffer for large means).
    """

    def __init__(self) -> None:
        self.count = 0
        self.shift_a: Tensor | None = None

    def update(self, a: Tensor, b: Tensor) -> None:
        if a.shape != b.shape or a.dim() != 2:
            raise NeuligError(f"paired activations must have the same [units, samples] shape, got "
                              f"{tuple(a.shape)} and {tuple(b.shape)}")
        a, b = a.float(), b.float()
        if self.shift_a is None:
            self.shift_a, self.shift_b = a.mean(1).double(), b.mean(1).double()
            n = a.shape[0]
            self.sum_a = torch.zeros(n, dtype=torch.float64, device=a.device)
            self.sum_b, self.sq_a, self.sq_b = (torch.zeros_like(self.sum_a) for _ in range(3))
            self.cross = torch.zeros(n, n, dtype=torch.float32, device=a.device)
        a = a - self.shift_a.float()[:, None]
        b = b - self.shift_b.float()[:, None]
        self.count += a.shape[1]
        self.sum_a += a.sum(1).double()
        self.sum_b += b.sum(1).double()
        self.sq_a += (a * a).sum(1).double()
        self.sq_b += (b * b).sum(1).double()
        self.cross += a @ b.T

    def similarity(self, measure: str = "pearson") -> Tensor:
        """[n, n] float32 similarity of A's units (rows) with B's units (columns)."""
        check_measure(measure)
        if self.count == 0:
            raise NeuligError("no activations were recorded; pass at least one image batch")
        n = self.count
        mu_a, mu_b = self.sum_a / n, self.sum_b / n
        ex2_a, ex2_b = self.sq_a / n, self.sq_b / n
        if measure == "pearson":
            num = self.cross / n - torch.outer(mu_a.float(), mu_b.float())
            var_a, var_b = (ex2_a - mu_a**2).clamp_min(0), (ex2_b - mu_b**2).clamp_min(0)
        else:  # undo the shift: E[ab] = E[a'b'] + c_a E[b'] + E[a'] c_b + c_a c_b
            ca, cb = self.shift_a, self.shift_b
            num = self.cross / n + torch.outer(ca.float(), (mu_b + cb).float()) + torch.outer(mu_a.float(), cb.float())
            var_a, var_b = ex2_a + 2 * ca * mu_a + ca**2, ex2_b + 2 * cb * mu_b + cb**2
        return num / torch.outer(var_a.sqrt().float(), var_b.sqrt().float()).clamp_min(EPS)


def activation_similarity(sites: list[CrossMoments], measure: str = "pearson") -> Tensor:
    """S_act of one group: the mean of its probe sites' similarity matrices."""
    return torch.stack([m.similarity(measure) for m in sites]).mean(0)
