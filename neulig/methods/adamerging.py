"""AdaMerging (Yang et al., ICLR 2024, arXiv 2310.02575) on one combination: task- or layer-wise lambdas
learned by entropy minimisation on the *unlabeled test images* of every dataset (test-time adaptation,
as the reference), then the merged model and its ensemble counterpart evaluated on the test splits.

Ensemble counterpart: the cached expert test features [N, T, d] combined (``ensemble.level``) with the
learned lambdas (clamped to [0, 1] unless ``clamp`` is off), averaged over tensors (layer-wise), clipped
at 0 and normalised to sum 1. The run also records how far the raw lambdas drifted out of [0, 1]
(``drift/...``) and, every ``curve_every`` steps, the merged model's val and test accuracy (its curve;
no step count is chosen from it).
"""
from __future__ import annotations

import torch

from neulig.config.merge import AdaMergingMerge
from neulig.methods.combination import Combination, Context
from neulig.results import ComboResult, MergedModel


def run(combination: Combination, method: AdaMergingMerge, context: Context) -> ComboResult:
    import lightning as L

    from neulig.lit.adamerging import AdaMergingModule
    from neulig.lit.trainer import fit_steps
    from neulig.merging.adamerging import AdaMergingWeights

    L.seed_everything(context.seed, verbose=False)
    merger = AdaMergingWeights(combination.base, combination.experts, method.granularity, method.init_lambda,
                               method.clamp)
    test_sets = {d: combination.datasets[d].test for d in combination.names}

    @torch.no_grad()
    def curve() -> dict[str, float]:
        state = {k: v.detach() for k, v in merger.merged_state().items()}
        return combination.curve_point(state)

    module = AdaMergingModule(combination.visual, merger, combination.heads, test_sets, method, context.seed, curve)
    fit_steps(module, method.steps, context.trainer, context.callbacks)
    merger = merger.to(combination.device)
    with torch.no_grad():
        state = {k: v.detach() for k, v in merger.merged_state().items()}
    coeffs = merger.ensemble_coefficients().cpu()
    accuracy = {"merged": combination.merged_accuracy(state, "test"),
                "ensembled": combination.ensemble_accuracy(coeffs, context.level)}
    lambdas = merger.coefficients().detach().cpu()
    details = {"coefficients": {d: float(c) for d, c in zip(combination.names, coeffs)},
               "lambda_mean": {d: float(c) for d, c in zip(combination.names, lambdas.mean(0))},
               "granularity": merger.granularity}
    drift = {f"drift/{k}": v for k, v in merger.drift().items()}
    return ComboResult(tuple(combination.names), accuracy, granularity="one merged encoder, lambdas learned at test time",
                       merged=(MergedModel("merged", state),), details=details, history=tuple(module.history),
                       diagnostics=drift)
