"""WeMoE (Tang et al., ICML 2024, arXiv 2402.00433) on one combination: Task Arithmetic everywhere and a
weight-ensembling MoE in every MLP, whose routers are trained by entropy minimisation on the
*unlabeled test images* (test-time adaptation, as the reference); the task only selects the head.

``merged`` is the WeMoE encoder itself (its MLPs are per-sample weight ensembles, so it is one
network with input-dependent weights); ``ensembled`` combines the cached expert test features with
each sample's routing weights averaged over the MoE layers, clipped at 0 and normalised (a
per-sample ensemble, as Portland's CoopVec). The run records the range of the routing weights on the
test images (``drift/routing_min``, ``drift/routing_max``; at initialisation every weight is
``init_lambda``) and, every ``curve_every`` steps, the val and test accuracy (its curve).
"""
from __future__ import annotations

import torch

from neulig.config.merge import WeMoEMerge
from neulig.evaluate import accuracy, ensemble_logits, feature_accuracy
from neulig.methods.combination import Combination, Context
from neulig.results import ComboResult


@torch.no_grad()
def evaluate(combination: Combination, wemoe, level: str, split: str = "test") -> tuple[dict, dict, dict]:
    """Merged (the WeMoE encoder) and per-sample-routed ensemble accuracy on every ``split``, the mean
    routing weights per dataset and the range of the routing weights."""
    from neulig.data.loaders import loader
    from neulig.merging.wemoe import ensemble_coefficients

    wemoe = wemoe.to(combination.device).eval()
    acc: dict = {"merged": {}, "ensembled": {}}
    routing: dict = {}
    low, high = float("inf"), float("-inf")
    for d in combination.names:
        feats, coeffs = [], []
        for x, _ in loader(getattr(combination.datasets[d], split), combination.eval_batch_size,
                           num_workers=combination.num_workers, device=combination.device):
            feats.append(wemoe(x.to(combination.device, non_blocking=True)).float().cpu())
            weights = wemoe.routing_weights()
            low, high = min(low, float(weights.min())), max(high, float(weights.max()))
            coeffs.append(ensemble_coefficients(weights).cpu())
        labels, coeffs = combination.labels(d, split), torch.cat(coeffs)
        acc["merged"][d] = feature_accuracy(torch.cat(feats), labels, combination.heads[d])
        acc["ensembled"][d] = accuracy(ensemble_logits(combination.features[d].split(split), combination.heads[d],
                                                       coeffs, level), labels)
        routing[d] = [float(c) for c in coeffs.mean(0)]
    return acc, routing, {"drift/routing_min": low, "drift/routing_max": high}


def run(combination: Combination, method: WeMoEMerge, context: Context) -> ComboResult:
    import lightning as L

    from neulig.lit.trainer import fit_steps
    from neulig.lit.wemoe import WeMoEModule
    from neulig.merging.wemoe import WeMoE

    L.seed_everything(context.seed, verbose=False)
    wemoe = WeMoE(combination.visual, combination.base, combination.experts, method.init_lambda,
                  method.router_hidden_layers)
    test_sets = {d: combination.datasets[d].test for d in combination.names}

    def curve() -> dict[str, float]:
        wemoe.set_batch_reduce(False)
        point = {f"{split}/merged_avg": mean(evaluate(combination, wemoe, context.level, split)[0]["merged"])
                 for split in ("val", "test")}
        wemoe.set_batch_reduce(method.batch_reduce)
        return point

    module = WeMoEModule(wemoe, combination.heads, test_sets, method, context.seed, curve)
    fit_steps(module, method.steps, context.trainer, context.callbacks)
    acc, routing, drift = evaluate(combination, wemoe, context.level)
    return ComboResult(tuple(combination.names), acc, granularity="one encoder with input-routed MLP weights",
                       details={"routing_mean": routing}, history=tuple(module.history), diagnostics=drift)


def mean(values: dict[str, float]) -> float:
    return sum(values.values()) / len(values)
