"""The test-time-adaptation combiners as trained methods: AdaMerging and WeMoE.

Runners follow the pipeline's contract ``runner(combo, merge_cfg, trainer_cfg, level, seed, callbacks)
-> (result, history)``. Both methods adapt on the *unlabeled test images* of every dataset in the
combination (test-time adaptation, as their references; methods.md §9, §10), then every dataset is
evaluated on its test split with its own head ``combo.heads[d]``.

Ensemble counterparts (``ensembled``): the cached expert test features [N, T, d] combined by
``ensemble_logits`` (``ensemble.level``) with the per-expert coefficients the method itself uses,
 - AdaMerging task-wise (arXiv 2310.02575): the learned clamp(lambda, 0, 1), normalised to sum 1;
 - AdaMerging layer-wise: clamp(lambda^j, 0, 1) averaged over the tensors j per task, normalised;
 - WeMoE (arXiv 2402.00433): each test sample's routing weights r(x) averaged over the MoE layers,
   clipped at 0 and normalised per sample (a per-sample ensemble, as Portland's CoopVec).
``merged`` is the adapted model itself: AdaMerging's merged weights, or the WeMoE encoder (whose
MLPs are per-sample weight ensembles, so it is one network with input-dependent weights).
"""
from __future__ import annotations

import warnings

import torch

from neulig.combine import Combo
from neulig.evaluate import accuracy, ensemble_logits, feature_accuracy, merged_features


def _fit(module, merge_cfg: dict, trainer_cfg: dict, callbacks: list | None) -> None:
    """One Lightning step per optimisation step, ``merge.steps`` of them, no sanity check or bar."""
    import lightning as L

    from neulig.stages import trainer_kwargs

    kwargs = trainer_kwargs(trainer_cfg)
    kwargs.update(max_steps=int(merge_cfg["steps"]), max_epochs=1, use_distributed_sampler=False,
                  num_sanity_val_steps=0, enable_progress_bar=False)
    with warnings.catch_warnings():  # by design: a frozen encoder in eval mode, batches drawn in the step
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
        L.Trainer(callbacks=callbacks or [], **kwargs).fit(module)


def _test_sets(combo: Combo) -> dict:
    return {d: combo.datasets[d].test for d in combo.names}


def _log_every(merge_cfg: dict) -> int:
    return int(merge_cfg.get("log_every", max(1, int(merge_cfg["steps"]) // 50)))


def run_adamerging(combo: Combo, merge_cfg: dict, trainer_cfg: dict, level: str, seed: int,
                   callbacks: list | None = None) -> tuple[dict, list[dict]]:
    """Learn task-/layer-wise lambdas by test-time entropy minimisation, evaluate merge and ensemble."""
    import lightning as L

    from neulig.lit.adamerging import AdaMergingModule
    from neulig.merging.adamerging import AdaMergingWeights

    L.seed_everything(seed, verbose=False)
    merger = AdaMergingWeights(combo.base, combo.experts, merge_cfg.get("granularity", "layer"),
                               float(merge_cfg.get("init_lambda", 0.3)))
    module = AdaMergingModule(combo.visual, merger, combo.heads, _test_sets(combo), steps=int(merge_cfg["steps"]),
                              lr=float(merge_cfg.get("lr", 1e-3)), batch_size=int(merge_cfg.get("batch_size", 16)),
                              batches_per_task=int(merge_cfg.get("batches_per_task", 2)),
                              log_every=_log_every(merge_cfg), seed=seed)
    _fit(module, merge_cfg, trainer_cfg, callbacks)
    merger = merger.to(combo.device)
    with torch.no_grad():
        state = {k: v.detach() for k, v in merger.merged_state().items()}
    coeffs = merger.ensemble_coefficients().cpu()
    out: dict = {"merged": {}, "ensembled": {}}
    for d in combo.names:
        labels = combo.labels(d, "test")
        feats = merged_features(combo.visual, state, combo.datasets[d].test, combo.eval_batch_size, combo.device)
        out["merged"][d] = feature_accuracy(feats, labels, combo.heads[d])
        out["ensembled"][d] = accuracy(ensemble_logits(combo.features[d]["test"], combo.heads[d], coeffs, level), labels)
    lambdas = merger.coefficients().detach().cpu()
    out["coefficients"] = {d: float(c) for d, c in zip(combo.names, coeffs)}
    out["lambda_mean"] = {d: float(c) for d, c in zip(combo.names, lambdas.mean(0))}
    out["granularity"] = merger.granularity
    return out, module.history


@torch.no_grad()
def evaluate_wemoe(combo: Combo, wemoe, level: str) -> dict:
    """Merged (the WeMoE encoder) and per-sample-routed ensemble accuracy on every test split."""
    from neulig.merging.wemoe import ensemble_coefficients
    from neulig.stages import loader

    wemoe = wemoe.to(combo.device).eval()
    out: dict = {"merged": {}, "ensembled": {}, "routing_mean": {}}
    for d in combo.names:
        feats, coeffs = [], []
        for x, _ in loader(combo.datasets[d].test, combo.eval_batch_size):
            feats.append(wemoe(x.to(combo.device)).float().cpu())
            coeffs.append(ensemble_coefficients(wemoe.routing_weights()).cpu())
        labels, coeffs = combo.labels(d, "test"), torch.cat(coeffs)
        out["merged"][d] = feature_accuracy(torch.cat(feats), labels, combo.heads[d])
        out["ensembled"][d] = accuracy(ensemble_logits(combo.features[d]["test"], combo.heads[d], coeffs, level), labels)
        out["routing_mean"][d] = [float(c) for c in coeffs.mean(0)]
    return out


def run_wemoe(combo: Combo, merge_cfg: dict, trainer_cfg: dict, level: str, seed: int,
              callbacks: list | None = None) -> tuple[dict, list[dict]]:
    """Train WeMoE's routers by test-time entropy minimisation, evaluate the MoE and its ensemble."""
    import lightning as L

    from neulig.lit.wemoe import WeMoEModule
    from neulig.merging.wemoe import WeMoE

    L.seed_everything(seed, verbose=False)
    wemoe = WeMoE(combo.visual, combo.base, combo.experts, float(merge_cfg.get("init_lambda", 0.3)),
                  int(merge_cfg.get("router_hidden_layers", 2)))
    module = WeMoEModule(wemoe, combo.heads, _test_sets(combo), steps=int(merge_cfg["steps"]),
                         lr=float(merge_cfg.get("lr", 1e-3)), batch_size=int(merge_cfg.get("batch_size", 16)),
                         log_every=_log_every(merge_cfg), seed=seed)
    _fit(module, merge_cfg, trainer_cfg, callbacks)
    return evaluate_wemoe(combo, wemoe, level), module.history
