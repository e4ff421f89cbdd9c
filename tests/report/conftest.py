"""A real MLflow sqlite store in a temp dir, written the way ``python -m neulig.run`` writes it.

Each run's config is composed as the CLI composes it; the run is opened by ``neulig.run.open_reporter``
(so it carries the tags the run writes) and finished with its flattened config as params and contract
metrics whose values differ from run to run. One run is written as runs were before the ``config.*``
tags existed, under a run name that lies, and one run fails.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

DATASETS = ["digits", "mnist5k", "shapes", "textures"]
SINGLE, DIVERSE = "neulig-embedded-tiny", "diverse-origin-tiny"


@dataclass(frozen=True)
class Logged:
    """One run written to the store: what the report must show for it."""

    run_id: str
    run_name: str
    experiment: str
    merge: str
    seed: int
    overrides: tuple[str, ...]
    metrics: dict
    results: Path  # its results.json
    kinds: bool = False


# (overrides, has extra kinds of accuracy); logged in this order, so later is newer
PLAN = [
    (("merge=portland", "seed=0"), True),
    (("merge=regmean", "seed=0"), False),
    (("merge=portland", "seed=1"), False),
    (("merge=portland", "seed=0", "merge.views=0"), False),
    (("merge=portland", "seed=0", "data.num_co_models=2"), False),
    (("merge=portland", "seed=0"), False),  # a re-run of the first: newer
    (("merge=average", "seed=0", "+experiment=diverse_origin", "align=none"), False),
    (("merge=average", "seed=0", "+experiment=diverse_origin", "align=weight"), False),
    (("merge=average", "seed=1", "+experiment=diverse_origin", "align=weight"), False),
    (("merge=average", "seed=2", "+experiment=diverse_origin", "align=weight"), False),
]
OLD = ("merge=portland", "seed=2")  # recorded without config.* tags
PRE = {"digits": 75.16666865348816, "mnist5k": 63.16666603088379, "shapes": 90.83333611488342, "textures": 99.83333349227905}
FT = {"digits": 98.5, "mnist5k": 88.83333206176758, "shapes": 93.33333373069763, "textures": 100.0}
KINDS = {"merged_batch": "merged per test batch", "merged_task": "one merge per dataset",
         "merged_global": "one merge for all"}


def contract(index: int, ensemble: bool, kinds: bool) -> dict[str, float]:
    """Metrics as the pipeline makes them (avg = mean, gap/avg = |avg ens - avg mer|), distinct per run."""
    merged = {d: 80.0 + index + 0.123456789 * (i + 1) for i, d in enumerate(DATASETS)}
    ensembled = {d: v + 1.5 - 0.75 * i for i, (d, v) in enumerate(merged.items())}
    groups = {"merged": merged, "pretrained": PRE, "finetuned": FT, **({"ensembled": ensembled} if ensemble else {})}
    if kinds:
        groups |= {kind: {d: v - 2.0 * (j + 1) for d, v in merged.items()} for j, kind in enumerate(KINDS)}
    metrics = {}
    for kind, values in groups.items():
        metrics |= {f"acc/{kind}/{d}": v for d, v in values.items()}
        metrics[f"acc/{kind}/avg"] = sum(values.values()) / len(values)
    if ensemble:
        metrics |= {f"gap/{d}": abs(ensembled[d] - merged[d]) for d in DATASETS}
        metrics["gap/avg"] = abs(metrics["acc/ensembled/avg"] - metrics["acc/merged/avg"])
    return metrics


def config_of(overrides: tuple[str, ...], uri: str):
    from neulig.config import compose, load

    return load(compose([*overrides, f"logger.tracking_uri={uri}"]))


def write(reporter, config, metrics: dict, run_dir: Path, kinds: bool) -> None:
    from neulig.report import KINDS_TAG

    run_dir.mkdir(parents=True)
    (run_dir / "results.json").write_text(json.dumps({"metrics": metrics}))
    if kinds:  # as MLflowReporter.report tags a run that measured extra kinds of accuracy
        reporter.client.set_tag(reporter.run_id, KINDS_TAG, json.dumps(KINDS))
    reporter.finish(asdict(config), metrics, [run_dir / "results.json"])
    time.sleep(0.01)  # distinct start times


def log_store(root: Path, uri: str) -> list[Logged]:
    from neulig.callbacks.mlflow import MLflowReporter
    from neulig.run import open_reporter

    logged = []
    for index, (overrides, kinds) in enumerate(PLAN):
        config = config_of(overrides, uri)
        metrics = contract(index, ensemble=config.merge.name != "regmean", kinds=kinds)
        reporter = open_reporter(config)
        write(reporter, config, metrics, root / f"run{index}", kinds)
        logged.append(Logged(reporter.run_id, config.run_name, config.logger.experiment_name, config.merge.name,
                             config.seed, overrides, metrics, root / f"run{index}" / "results.json", kinds))
    config = config_of(OLD, uri)  # as run.py tagged runs before the config.* tags, under a misleading name
    metrics = contract(len(PLAN), ensemble=True, kinds=False)
    legacy = {"backbone": "tiny", "datasets": ",".join(DATASETS), "merge": "portland", "merge.kind": "trained"}
    reporter = MLflowReporter(uri, SINGLE, "ties-shapes-rn50-s7", legacy)
    reporter.open()
    write(reporter, config, metrics, root / "old", False)
    logged.append(Logged(reporter.run_id, "ties-shapes-rn50-s7", SINGLE, "portland", 2, OLD, metrics,
                         root / "old" / "results.json"))
    broken = open_reporter(config_of(("merge=ties", "seed=0"), uri))
    broken.fail()
    return logged


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    """{"uri", "root", "runs": [Logged]} of the store above."""
    root = tmp_path_factory.mktemp("report_store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    cwd = os.getcwd()
    os.chdir(root)  # anything MLflow writes relative to the working directory stays in the temp dir
    try:
        runs = log_store(root, uri)
    finally:
        os.chdir(cwd)
    return {"uri": uri, "root": root, "runs": runs}


def by(runs: list[Logged], *overrides: str, experiment: str | None = None) -> list[Logged]:
    """The logged runs whose overrides include all of ``overrides`` (and are of ``experiment``)."""
    return [r for r in runs if set(overrides) <= set(r.overrides) and experiment in (None, r.experiment)]
