"""Matching solvers: linear assignment, whole-head assignment, coordinate descent over groups.

Linear assignment (LAP): given the cross similarity S [n, n] of a group (rows: reference units,
columns: the other model's units), p = argmax_p sum_i S[i, p[i]] over permutations (scipy's
``linear_sum_assignment``). The group's score is the mean matched similarity (1/n) sum_i S[i, p[i]].

Whole heads (MuDSC, arXiv 2403.01753): with H heads of d units, for every head pair (j, k) solve
the LAP inside the d x d block S[j, k] and score the pair by its mean matched similarity; then
solve a LAP over the H x H pair scores to pair whole heads, and compose. Head partners (the Q/K and V
groups of one attention layer) must share the head pairing, so their pair scores are summed before
the head LAP; the within-head matchings stay separate. Given the head pairing the parts separate, so
this solves the joint problem exactly.

Coordinate descent (Git Re-Basin, arXiv 2209.04836; MuDSC's iterative weight-space refinement):
a sweep visits the solve steps (a group, or a group with its head partner) in a random order drawn
from a generator seeded with ``seed``; each step rebuilds its similarity with the other groups'
current permutations and re-solves. A sweep's score is the mean over groups of the scores recorded
when they were solved. A sweep that does not beat the best score so far counts as no progress and
the best permutations are restored; after ``tol`` sweeps without progress (or ``max_sweeps``) the
loop stops and returns the best permutations.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from neulig.alignment.permute import Permutation
from neulig.alignment.spec import PermutationSpec

# (group name, current permutations) -> S [n, n]. Returning the very same tensor object as on an earlier
# call means "unchanged": the loop then reuses that step's earlier solution instead of solving again.
SimilarityFn = Callable[[str, Permutation], Tensor]
PROGRESS = 1e-9  # a sweep must beat the best score by more than this to count as progress


def _lap(score: np.ndarray) -> np.ndarray:
    rows, cols = linear_sum_assignment(score, maximize=True)
    return cols[np.argsort(rows)]


def linear_assignment(score: Tensor) -> Tensor:
    """p maximising sum_i score[i, p[i]] for a square score matrix."""
    return torch.as_tensor(_lap(score.detach().double().cpu().numpy()), dtype=torch.long)


def matched_similarity(score: Tensor, p: Tensor) -> float:
    """(1/n) sum_i score[i, p[i]]."""
    return float(score[torch.arange(score.shape[0], device=score.device), p.to(score.device)].double().mean())


def head_assignment(scores: Sequence[Tensor], heads: int) -> list[Tensor]:
    """Two-level LAP over whole heads, one head pairing shared by all ``scores`` (head partners)."""
    n = scores[0].shape[0]
    d = n // heads
    pair = np.zeros((heads, heads))
    within = []  # per part: [j][k] -> matching inside head pair (j, k)
    for score in scores:
        s = score.detach().double().cpu().numpy().reshape(heads, d, heads, d)
        table = [[None] * heads for _ in range(heads)]
        for j in range(heads):
            for k in range(heads):
                block = s[j, :, k, :]
                table[j][k] = p = _lap(block)
                pair[j, k] += block[np.arange(d), p].mean()
        within.append(table)
    head_of = _lap(pair)
    return [torch.as_tensor(np.concatenate([head_of[j] * d + table[j][head_of[j]] for j in range(heads)]),
                            dtype=torch.long) for table in within]


def solve(scores: Sequence[Tensor], heads: int = 1) -> list[Tensor]:
    """The matching of one solve step: a LAP per group, or the whole-head LAP for head groups."""
    if heads == 1:
        return [linear_assignment(s) for s in scores]
    return head_assignment(scores, heads)


def solve_step(spec: PermutationSpec, step: Sequence[str], similarity: SimilarityFn, perm: Permutation,
               memo: dict | None = None) -> dict[str, tuple[Tensor, float]]:
    """Solve the groups of one step against ``perm`` (the other groups' current permutations).

    With ``memo``, a step whose similarity objects are the ones it was last solved with is not solved again.
    """
    scores = [similarity(name, perm) for name in step]
    if memo is not None and step in memo and all(a is b for a, b in zip(memo[step][0], scores)):
        return memo[step][1]
    solved = solve(scores, spec.group(step[0]).heads)
    result = {name: (p, matched_similarity(s, p)) for name, s, p in zip(step, scores, solved)}
    if memo is not None:
        memo[step] = (scores, result)
    return result


def solve_once(spec: PermutationSpec, similarity: SimilarityFn, perm: Permutation) -> Permutation:
    """Every step solved once against ``perm`` (activation matching: S does not depend on ``perm``)."""
    out = dict(perm)
    for step in spec.steps:
        out.update({name: p for name, (p, _) in solve_step(spec, step, similarity, perm).items()})
    return out


@dataclass(frozen=True)
class Refinement:
    permutation: Permutation
    sweeps: int  # sweeps run
    history: tuple[float, ...]  # each sweep's score


def coordinate_descent(spec: PermutationSpec, similarity: SimilarityFn, init: Permutation, max_sweeps: int,
                       tol: int, seed: int) -> Refinement:
    """Refine ``init`` by coordinate descent over the solve steps, keeping the best sweep (at most
    ``max_sweeps``, stopping after ``tol`` without progress; ``seed``: the groups' random order; the
    values of the ``align`` group, ``config.align.AlignConfig``)."""
    generator = torch.Generator().manual_seed(seed)
    current, best, best_score = dict(init), dict(init), -float("inf")
    history: list[float] = []
    memo: dict = {}
    stale = 0
    for _ in range(max_sweeps):
        group_scores: dict[str, float] = {}
        for i in torch.randperm(len(spec.steps), generator=generator).tolist():
            for name, (p, score) in solve_step(spec, spec.steps[i], similarity, current, memo).items():
                current[name] = p
                group_scores[name] = score
        score = sum(group_scores.values()) / len(group_scores)
        history.append(score)
        if score > best_score + PROGRESS:
            best, best_score, stale = dict(current), score, 0
        else:
            current, stale = dict(best), stale + 1
            if stale >= tol:
                break
    return Refinement(best, len(history), tuple(history))
