"""Typed results: what one combination produced (:class:`ComboResult`), what a run produced
(:class:`RunResult`), the metric contract they flatten into, and the paper's Table 2 layout.

Accuracies are in percent, per dataset. A result carries its *kinds* of accuracy ({kind: {dataset:
acc}}: ``merged``, ``ensembled``, and whatever else the method measures, e.g. Portland's
``merged_task``), each with a label for tables; the run reports exactly the kinds its results hold.
Metric keys: ``acc/<kind>/<dataset>``, ``acc/<kind>/avg`` (the mean over datasets), ``gap/<dataset>``
= |ensembled - merged| and ``gap/avg`` = |avg ensembled - avg merged| (the paper's Avg Gap).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import Tensor

from neulig.utils.cache import atomic_write_text

Accuracy = Mapping[str, Mapping[str, float]]  # kind -> dataset -> accuracy (%)
REFERENCE_LABELS = {"pretrained": "Pre-trained", "finetuned": "Fine-tuned (individual)"}


@dataclass(frozen=True)
class MergedModel:
    """One merged image encoder a combination defines: its weights, or the coefficients of a convex
    combination of the combination's experts (materialised only when saved)."""

    name: str  # file stem: "merged", "merged_global", "merged_task/<dataset>"
    state: Mapping[str, Tensor] | None = None
    coefficients: tuple[float, ...] | None = None
    experts: tuple[Mapping[str, Tensor], ...] = ()

    def weights(self) -> dict[str, Tensor]:
        if self.state is not None:
            return dict(self.state)
        import torch

        from neulig.merging.flat import FlatStack

        return FlatStack(list(self.experts), device="cpu").combine(torch.tensor(self.coefficients))


@dataclass(frozen=True)
class ComboResult:
    """What a method produced on one dataset combination."""

    datasets: tuple[str, ...]
    accuracy: Accuracy  # {kind: {dataset: %}}; always "merged", and "ensembled" when it has an ensemble
    labels: Mapping[str, str] = field(default_factory=dict)  # extra kinds -> row label in tables
    granularity: str = "one static merged encoder"  # what acc/merged measures
    merged: tuple[MergedModel, ...] = ()  # the models save_merged writes
    details: Mapping[str, Any] = field(default_factory=dict)  # coefficients, diagnostics (results.json)
    history: tuple[Mapping[str, float], ...] = ()  # training curve points
    diagnostics: Mapping[str, float] = field(default_factory=dict)  # further metrics, e.g. align/<group>/similarity

    @property
    def metrics(self) -> dict[str, float]:
        return {**contract_metrics(self.accuracy), **self.diagnostics}


@dataclass(frozen=True)
class RunResult:
    """A run: the reference accuracies of the backbone and the experts, and every combination's result."""

    names: tuple[str, ...]
    reference: Accuracy  # {"pretrained": ..., "finetuned": ...}
    combos: tuple[ComboResult, ...]
    timings: Mapping[str, float]
    base: Any = None  # the backbone whose image tower is theta_0 (its text tower goes into saved merges)

    @property
    def accuracy(self) -> dict[str, dict[str, float]]:
        """Per kind and dataset: the mean over the combinations that contain the dataset (the paper's tables)."""
        per_kind: dict[str, dict[str, list[float]]] = {}
        for combo in self.combos:
            for kind, values in combo.accuracy.items():
                for d, v in values.items():
                    per_kind.setdefault(kind, {}).setdefault(d, []).append(v)
        return {kind: {d: sum(sums[d]) / len(sums[d]) for d in self.names if d in sums}
                for kind, sums in per_kind.items()}

    @property
    def metrics(self) -> dict[str, float]:
        """The contract metrics of the accuracies, and each diagnostic's mean over the combinations."""
        values: dict[str, list[float]] = {}
        for combo in self.combos:
            for key, value in combo.diagnostics.items():
                values.setdefault(key, []).append(value)
        return {**contract_metrics({**self.reference, **self.accuracy}),
                **{k: sum(v) / len(v) for k, v in values.items()}}

    @property
    def labels(self) -> dict[str, str]:
        return {k: v for combo in self.combos for k, v in combo.labels.items()}

    def record(self, run_name: str) -> dict:
        """The JSON-serialisable record written as results.json."""
        return {"run_name": run_name, "metrics": self.metrics, "timings": dict(self.timings),
                "granularity": {"acc/merged": self.combos[0].granularity},
                "combos": [{"datasets": list(c.datasets), "history": list(c.history),
                            "result": {**{k: dict(v) for k, v in c.accuracy.items()}, **c.details}}
                           for c in self.combos]}


def contract_metrics(per_kind: Accuracy) -> dict[str, float]:
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


def table2(metrics: Mapping[str, float], names: Sequence[str], method: str, labels: Mapping[str, str]) -> str:
    """Markdown table: reference rows (pretrained, fine-tuned), the method's merged / ensembled / gap,
    and one row per extra kind of accuracy the run measured (``labels``)."""
    cols = list(names) + ["avg"]
    header = "| method | " + " | ".join(f"{c} Mer. / Ens. / Gap" for c in cols) + " |"
    lines = [header, "|" + "---|" * (len(cols) + 1)]

    def single(kind: str, label: str) -> None:
        if f"acc/{kind}/avg" in metrics:
            lines.append(f"| {label} | " + " | ".join(f"{metrics[f'acc/{kind}/{c}']:.2f}" for c in cols) + " |")

    for kind, label in REFERENCE_LABELS.items():
        single(kind, label)
    if "acc/merged/avg" in metrics:
        cells = []
        for c in cols:
            ens = metrics.get(f"acc/ensembled/{c}")
            cells.append(f"{metrics[f'acc/merged/{c}']:.2f} / {ens:.2f} / {metrics[f'gap/{c}']:.2f}" if ens is not None
                         else f"{metrics[f'acc/merged/{c}']:.2f} / – / –")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    for kind, label in labels.items():
        single(kind, f"{method}, {label}")
    return "\n".join(lines)


def write_run_files(run_dir: Path, config_yaml: str, record: dict, table: str) -> dict[str, Path]:
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = {"config.yaml": run_dir / "config.yaml", "results.json": run_dir / "results.json",
             "results.md": run_dir / "results.md"}
    atomic_write_text(paths["config.yaml"], config_yaml)
    atomic_write_text(paths["results.json"], json.dumps(record, indent=2, sort_keys=True))
    atomic_write_text(paths["results.md"], table + "\n")
    return paths
