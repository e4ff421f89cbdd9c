"""Experts and base weights named on the hub: ``hf://<org>/<name>`` values of ``model.*``.

- ``model.experts_dir=hf://<org>/<prefix>``: FusionBench's layout on the hub (Tang et al., arXiv
  2406.03280), one Hugging Face ``CLIPVisionModel`` repository per task at ``<org>/<prefix>_<task>``,
  e.g. ``tanganke/clip-vit-base-patch32_stanford-cars``. A dataset's task name is neulig's own name
  except where FusionBench spells it otherwise (:data:`HUB_TASKS`); it maps back through the one naming
  table, :data:`neulig.models.expert_sources.DATASET_NAMES`.
- ``model.weights=hf://<org>/<name>``: the base, e.g. ``hf://openai/clip-vit-base-patch32`` (a CLIPModel).
- ``model.experts.<dataset>=hf://<org>/<name>``: one expert.

:func:`hub_references` lists them; :func:`missing_messages` says, without a request, which cannot be had
(absent from the hub cache while fetching is forbidden); :func:`with_local_folders` fetches what is
missing (:func:`neulig.models.hub.repo_folder`) and gives the config with local folders in their place,
which every reader of :mod:`neulig.models.expert_sources` then reads as any other folder.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from neulig.config.hub_names import hub_repo, is_hub
from neulig.config.model import ModelConfig
from neulig.models.expert_sources import dataset_name
from neulig.models.hub import cached_repo, fetching_allowed, missing_repo_message, repo_folder

# neulig's dataset name -> FusionBench's task name on the hub, where the two differ
HUB_TASKS = {"cars": "stanford-cars"}


def hub_task(dataset: str) -> str:
    """FusionBench's task name of a neulig dataset (``cars`` -> ``stanford-cars``)."""
    task = HUB_TASKS.get(dataset, dataset)
    assert dataset_name(task) == dataset, f"{task} must map back to {dataset} in DATASET_NAMES"
    return task


@dataclass(frozen=True)
class HubReferences:
    """The hub repositories a model config names: {dataset: expert repository}, the base's repository,
    and the datasets whose expert comes from ``model.experts_dir``."""

    experts: dict[str, str]
    base: str | None
    from_dir: frozenset[str]

    def expert_what(self, dataset: str) -> str:
        return f"the expert for {dataset} (model.{'experts_dir' if dataset in self.from_dir else 'experts.' + dataset})"

    def described(self) -> dict[str, str]:
        """{what, for messages: repository} of every reference."""
        out = {self.expert_what(d): r for d, r in self.experts.items()}
        if self.base:
            out[BASE_WHAT] = self.base
        return out


BASE_WHAT = "the base weights (model.weights)"


def hub_references(model: ModelConfig, datasets: list[str]) -> HubReferences:
    """The repositories named by ``hf://`` values; entries of ``model.experts`` win over ``experts_dir``."""
    experts: dict[str, str] = {}
    from_dir: set[str] = set()
    if is_hub(model.experts_dir):
        prefix = hub_repo(model.experts_dir)
        experts.update({d: f"{prefix}_{hub_task(d)}" for d in datasets})
        from_dir = set(datasets)
    for name, path in (model.experts or {}).items():
        key = str(name).lower()
        from_dir.discard(key)
        if is_hub(str(path)):
            experts[key] = hub_repo(str(path))
        else:  # a local file given for this dataset replaces the hub's
            experts.pop(key, None)
    base = hub_repo(model.weights) if is_hub(model.weights) else None
    return HubReferences(experts, base, frozenset(from_dir))


def missing_messages(model: ModelConfig, datasets: list[str]) -> list[str]:
    """One line per named repository that is not in the hub cache while fetching is forbidden (no request)."""
    if fetching_allowed(model.download):
        return []
    return [missing_repo_message(repo, what, model.download)
            for what, repo in hub_references(model, datasets).described().items() if cached_repo(repo) is None]


def with_local_folders(model: ModelConfig, datasets: list[str]) -> ModelConfig:
    """``model`` with every ``hf://`` value replaced by the repository's local folder (fetched when absent
    and allowed): hub experts become ``model.experts`` entries, a hub ``experts_dir`` is dropped."""
    refs = hub_references(model, datasets)
    if not refs.experts and refs.base is None:
        return model
    experts = {str(d).lower(): str(p) for d, p in (model.experts or {}).items() if not is_hub(str(p))}
    experts.update({d: str(repo_folder(r, refs.expert_what(d), model.download)) for d, r in refs.experts.items()})
    weights = str(repo_folder(refs.base, BASE_WHAT, model.download)) if refs.base else model.weights
    return replace(model, experts=experts, weights=weights,
                   experts_dir=None if is_hub(model.experts_dir) else model.experts_dir)
