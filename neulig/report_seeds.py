"""``python -m neulig.report --over-seeds``: one row per experiment, its mean and spread over seeds.

Runs whose recorded config (MLflow params) is the same but for ``seed`` are one experiment. Each row
shows, per dataset, the mean over seeds of ``Mer. / Ens. / Gap``, and for the average
``mean ± sd`` of each (sd: the sample standard deviation over seeds, n - 1; 0 with one seed), with the
seeds it holds. The Avg gap of a seed is that run's ``gap/avg`` = |Avg Ens. - Avg Mer.|; the row shows
their mean. Rows of one method that differ in other options are labelled with those options. The
Pre-trained and Fine-tuned rows are the means over the seeds of the experiments shown.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

from neulig.report import REFERENCES, fmt

# params that name where a run wrote, not what it computed
IGNORED = ("seed", "paths.", "hydra.", "logger.", "progress")


@dataclass(frozen=True)
class SeedGroup:
    """The runs of one experiment over seeds."""

    label: str
    runs: tuple  # of report.Run
    seeds: tuple[str, ...]


def experiment_key(params: dict[str, str]) -> tuple:
    return tuple(sorted((k, v) for k, v in params.items() if not k.startswith(IGNORED)))


def group_runs(runs: list) -> list[SeedGroup]:
    """Runs grouped by their config without the seed (the newest run of each seed kept), labelled by
    method and by the options in which one method's experiments differ."""
    groups: dict[tuple, dict[str, object]] = {}
    for run in sorted(runs, key=lambda r: r.start_time):
        groups.setdefault((run.model, run.data, tuple(run.datasets), experiment_key(run.params)), {})[
            run.params.get("seed", "?")] = run
    by_method: dict[tuple, list[tuple]] = {}
    for key in groups:
        by_method.setdefault((key[0], key[1], key[2], next(iter(groups[key].values())).method), []).append(key)
    out = []
    for (_, _, _, method), keys in sorted(by_method.items()):
        configs = [dict(key[3]) for key in keys]
        varying = sorted(k for k in set().union(*configs) if len({c.get(k) for c in configs}) > 1)
        for key, params in zip(keys, configs):
            extra = ", ".join(f"{k}={params.get(k, '–')}" for k in varying if k != "merge.name")
            seeds = tuple(sorted(groups[key], key=lambda s: (len(s), s)))
            out.append(SeedGroup(f"{method} ({extra})" if extra else method,
                                 tuple(groups[key][s] for s in seeds), seeds))
    return out


def mean_sd(values: list[float | None]) -> tuple[float | None, float | None]:
    present = [v for v in values if v is not None]
    if len(present) != len(values) or not present:
        return None, None
    return statistics.fmean(present), statistics.stdev(present) if len(present) > 1 else 0.0


def cell(stats: tuple[float | None, float | None], decimals: int, missing: str, spread: bool) -> str:
    mean, sd = stats
    if mean is None:
        return missing
    return fmt(mean, decimals, missing) + (f" ± {fmt(sd, decimals, missing)}" if spread else "")


def render(runs: list, decimals: int, missing: str) -> str:
    """Markdown tables, one per dataset list: references, then one row per experiment."""
    tables: dict[tuple, list[SeedGroup]] = {}
    for group in group_runs(runs):
        tables.setdefault(tuple(group.runs[0].datasets), []).append(group)
    out = []
    for datasets, groups in tables.items():
        names = [*datasets, "avg"]
        head = ["method", *(f"{d} Mer. / Ens. / Gap" for d in datasets), "Avg Mer. / Ens. / Gap", "seeds"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        every = [run for g in groups for run in g.runs]
        for kind, label in REFERENCES:
            by_seed = {r.params.get("seed"): r for r in every if f"acc/{kind}/avg" in r.metrics}
            if by_seed:
                stats = [mean_sd([r.metrics.get(f"acc/{kind}/{d}") for r in by_seed.values()]) for d in names]
                lines.append(f"| {label} | " + " | ".join(cell(s, decimals, missing, d == "avg")
                                                        for s, d in zip(stats, names)) + f" | {len(by_seed)} |")
        for group in groups:
            cells = []
            for d in names:
                parts = [mean_sd([r.metrics.get(f"{m}/{d}") for r in group.runs])
                         for m in ("acc/merged", "acc/ensembled", "gap")]
                cells.append(" / ".join(cell(p, decimals, missing, d == "avg") for p in parts))
            lines.append(f"| {group.label} | " + " | ".join(cells) + f" | {','.join(group.seeds)} |")
        out.append(f"datasets: {', '.join(datasets)}   (accuracy %, mean over seeds; Avg: mean ± sd; "
                   f"Gap = |Ens. - Mer.|)\n\n" + "\n".join(lines))
    return "\n\n".join(out) + "\n"
