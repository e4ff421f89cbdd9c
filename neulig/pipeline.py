"""The experiment recipe of DESIGN.md §1: backbone -> heads -> experts -> combination -> evaluation.

``run_experiment(cfg)`` takes the resolved config as a plain dict and returns the metric dict of
DESIGN.md §4 plus details. Heavy imports happen here, never at CLI start-up.
"""
from __future__ import annotations

import itertools
import time
from pathlib import Path

import torch

from neulig.errors import NeuligError
from neulig.utils.log import log


def choose_device(trainer_cfg: dict) -> torch.device:
    if trainer_cfg.get("accelerator") in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def combinations(names: list[str], k: int | None) -> list[tuple[str, ...]]:
    if k is None or k == len(names):
        return [tuple(names)]
    if not 2 <= k <= len(names):
        raise NeuligError(f"data.num_co_models={k} is out of range: choose 2..{len(names)} for {len(names)} datasets")
    return list(itertools.combinations(names, k))


def contract_metrics(per_kind: dict[str, dict[str, float]]) -> dict[str, float]:
    """Flatten {kind: {dataset: acc}} into ``acc/<kind>/<d>`` + ``acc/<kind>/avg`` and the gaps."""
    metrics: dict[str, float] = {}
    for kind, values in per_kind.items():
        if not values:
            continue
        for d, v in values.items():
            metrics[f"acc/{kind}/{d}"] = float(v)
        metrics[f"acc/{kind}/avg"] = float(sum(values.values()) / len(values))
    if "merged" in per_kind and "ensembled" in per_kind:
        for d in per_kind["merged"]:
            metrics[f"gap/{d}"] = abs(per_kind["ensembled"][d] - per_kind["merged"][d])
        metrics["gap/avg"] = abs(metrics["acc/ensembled/avg"] - metrics["acc/merged/avg"])
    return metrics


def expert_origins(model_cfg: dict, names: list[str]) -> dict[str, object]:
    """The starting checkpoint of each dataset's expert: ``model.origins`` cycled over the datasets
    (pretraining seeds for ``tiny``, pretrained tags for real models); one shared origin by default."""
    origins = model_cfg.get("origins") or [None]
    return {d: origins[i % len(origins)] for i, d in enumerate(names)}


def origin_config(model_cfg: dict, origin: object) -> dict:
    """The model config of one origin (``None``: the model config itself)."""
    if origin is None:
        return model_cfg
    out = {**model_cfg}
    if model_cfg.get("pretrained") == "neulig":
        out["pretrain"] = {**model_cfg["pretrain"], "seed": int(origin)}
    else:
        out["pretrained"] = origin
    return out


def quiet_libraries() -> None:
    """No warning spam on a normal run: Lightning's banners and tips are not news to our users."""
    import warnings

    from neulig.utils.log import quiet_lightning

    quiet_lightning()  # again in stages.trainer_kwargs: a later first import of lightning resets the levels
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*GPU available but not used.*")  # trainer=cpu is a choice


def run_experiment(cfg: dict, callbacks: list | None = None) -> dict:
    from neulig import combine, stages
    from neulig.data.registry import load_dataset
    from neulig.evaluate import feature_accuracy

    quiet_libraries()
    start = time.time()
    torch.manual_seed(cfg["seed"])
    cache_dir = Path(cfg["paths"]["cache_dir"])
    model_cfg, data_cfg, merge_cfg = cfg["model"], cfg["data"], cfg["merge"]
    names = [d.lower() for d in data_cfg["datasets"]]
    combos = combinations(names, data_cfg.get("num_co_models"))
    device = choose_device(cfg["trainer"])

    given = stages.user_experts(model_cfg, names)  # checked before any training
    origin_of = expert_origins(model_cfg, names)
    backbones = {o: stages.load_backbone(origin_config(model_cfg, o), cfg["paths"]["weights_dir"], cache_dir)
                 for o in dict.fromkeys(origin_of.values())}
    backbone = backbones[origin_of[names[0]]]  # the base (theta_0) of anchored methods
    log.info(f"backbone {backbone.name} ready ({len(backbones)} origin(s), {time.time() - start:.1f} s)")
    datasets = {d: load_dataset(d, data_cfg["sizes"], model_cfg["image_size"], data_cfg.get("split_seed", 0),
                                data_dir=data_cfg.get("root", cfg["paths"]["data_dir"]),
                                download=bool(data_cfg.get("download", False)), cache_dir=str(cache_dir))
                for d in names}
    log.info(f"datasets {', '.join(names)} loaded ({time.time() - start:.1f} s)")
    # each dataset's head and zero-shot reference come from the origin its expert starts from
    heads = {d: stages.load_head(backbones[origin_of[d]], datasets[d].spec, cache_dir) for d in names}
    base = {k: v.detach().cpu().clone() for k, v in backbone.visual.state_dict().items()}
    pre_feats = {d: stages.expert_features(backbones[origin_of[d]].visual, backbones[origin_of[d]].key, datasets[d],
                                           data_cfg, cache_dir, device) for d in names}
    experts, expert_keys = {}, {}
    for d in names:
        experts[d], expert_keys[d] = given[d] if d in given else stages.finetune_expert(
            backbones[origin_of[d]], datasets[d], heads[d], data_cfg, model_cfg["finetune"], cfg["trainer"],
            cfg["seed"], cache_dir, callbacks)
    timings = {"experts_ready_s": time.time() - start}
    log.info(f"experts ready ({timings['experts_ready_s']:.1f} s)")
    import copy

    scratch = copy.deepcopy(backbone.visual)
    feats: dict[str, dict[str, dict[str, torch.Tensor]]] = {}  # feats[expert][dataset][split]
    views = int(merge_cfg.get("views") or 0)  # augmented views of the train split (Portland)
    for e in names:
        scratch.load_state_dict(experts[e])
        feats[e] = {d: stages.expert_features(scratch, expert_keys[e], datasets[d], data_cfg, cache_dir, device)
                    for d in names}
        for d in names if views else ():
            feats[e][d]["train_views"] = stages.view_features(
                scratch, expert_keys[e], datasets[d], data_cfg, views, merge_cfg["view_scale"], cfg["seed"],
                cache_dir, device)
    reference = {
        "pretrained": {d: feature_accuracy(pre_feats[d]["test"], datasets[d].test.labels, heads[d]) for d in names},
        "finetuned": {d: feature_accuracy(feats[d][d]["test"], datasets[d].test.labels, heads[d]) for d in names},
    }
    timings["features_ready_s"] = time.time() - start
    log.info(f"expert features ready ({timings['features_ready_s']:.1f} s)")
    level = cfg["ensemble"]["level"]
    combo_results = []
    for combo_names in combos:
        combo = combine.Combo(
            names=list(combo_names), datasets={d: datasets[d] for d in combo_names}, heads=heads, base=base,
            experts=[experts[e] for e in combo_names],
            features={d: {s: torch.stack([feats[e][d][s] for e in combo_names], 1) for s in feats[combo_names[0]][d]}
                      for d in combo_names},
            visual=backbone.visual, device=device, eval_batch_size=cfg["eval"]["batch_size"])
        kind = merge_cfg["kind"]
        history: list[dict] = []
        merged_state = None
        if kind == "static":
            result, merged_state = combine.run_static(combo, merge_cfg, level, cfg["seed"])
        elif kind == "ensemble":
            result, _ = combine.run_plain_ensemble(combo, merge_cfg, level)
        else:  # trained combiners name their runner: run(combo, merge_cfg, trainer_cfg, level, seed, callbacks)
            runner = combine.resolve(merge_cfg.get("runner", "neulig.combine.run_portland"))
            result, history = runner(combo, merge_cfg, cfg["trainer"], level, cfg["seed"], callbacks)
        combo_results.append({"datasets": list(combo_names), "result": result, "history": history,
                              "merged_state": merged_state, "experts": combo.experts})
    timings["combination_done_s"] = time.time() - start
    log.info(f"{merge_cfg['name']} done ({timings['combination_done_s']:.1f} s)")
    per_kind = aggregate(combo_results, names)
    metrics = contract_metrics({**reference, **per_kind})
    timings["total_s"] = time.time() - start
    return {"metrics": metrics, "combos": combo_results, "timings": timings, "names": names,
            "expert_keys": expert_keys, "backbone_key": backbone.key, "backbone": backbone}


ACC_KINDS = ("merged", "ensembled", "merged_batch", "merged_task", "merged_global", "val_merged")


def aggregate(combo_results: list[dict], names: list[str]) -> dict[str, dict[str, float]]:
    """Per dataset, the mean over the combinations that contain it (the paper's tables)."""
    out: dict[str, dict[str, float]] = {}
    for kind in ACC_KINDS:
        sums: dict[str, list[float]] = {}
        for c in combo_results:
            for d, v in c["result"].get(kind, {}).items():
                sums.setdefault(d, []).append(v)
        if sums:
            out[kind] = {d: sum(sums[d]) / len(sums[d]) for d in names if d in sums}
    return out
