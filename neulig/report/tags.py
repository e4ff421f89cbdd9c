"""The MLflow tags a run carries for the report: their names, how a run computes them, how old runs are read.

The writer (``neulig.run.open_reporter``) and the reader (:mod:`neulig.report.store`) share this module, so a
tag's name is stated once. Besides the identity tags (``backbone``, ``datasets``, ``merge``, ``merge.kind``),
every option of the config that can change a run's numbers is tagged ``config.<option>`` with the same
text as its MLflow param (``config.seed``, ``config.align.method``, ``config.data.num_co_models``,
``config.model.origins``, ``config.merge.views``, ...). Runs recorded before these tags existed have the
params, which hold the same text: :func:`options_of` falls back to them. Run names are never parsed.

Nothing here imports mlflow, torch or Lightning.
"""
from __future__ import annotations

from collections.abc import Mapping

KINDS_TAG = "neulig.accuracy_kinds"  # JSON {kind: label} of the extra accuracies a run measured
OPTION_PREFIX = "config."
SEED = "seed"
# options that say where a run reads or writes, or how it shows progress: they never change a number
NOT_DISTINGUISHING = ("paths.", "logger.", "hydra.", "progress", "data.root", "data.download", "model.download",
                      "merge.runner", "trainer.enable_progress_bar", "save_merged", "save_format")


def distinguishing(flat: Mapping[str, str]) -> dict[str, str]:
    """The options of a flattened config (MLflow params) that can tell two experiments apart."""
    return {k: v for k, v in flat.items() if not k.startswith(NOT_DISTINGUISHING)}


def run_tags(config) -> dict[str, str]:
    """The tags of a run of ``config`` (a :class:`neulig.config.Config`): identity, then one per option."""
    from dataclasses import asdict

    from neulig.callbacks.mlflow import flatten  # the params' own flattening: a tag's text equals its param's

    options = distinguishing(flatten(asdict(config)))
    return {"backbone": config.model.name, "datasets": ",".join(config.data.datasets), "merge": config.merge.name,
            "merge.kind": config.merge.kind, **{OPTION_PREFIX + k: v for k, v in options.items()}}


def options_of(tags: Mapping[str, str], params: Mapping[str, str]) -> dict[str, str]:
    """A recorded run's distinguishing options (seed included): its ``config.*`` tags, or, for a run
    recorded before they existed, its params (an option absent from both is unknown, not a default)."""
    tagged = {k[len(OPTION_PREFIX):]: v for k, v in tags.items() if k.startswith(OPTION_PREFIX)}
    return tagged if tagged else distinguishing(params)
