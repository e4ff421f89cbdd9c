"""The table model: runs grouped into tables and rows, with means and spreads over seeds.

One table per experiment: the runs of one MLflow experiment (a study) on one backbone and one dataset list
(the columns). Above the method rows, Pre-trained and Fine-tuned reference rows. Each method row is
labelled by its method and by the options in which that method's rows of the table differ, so a label never
shows an option that is the same for all of them (``portland (merge.views=0)``, ``average
(align.method=weight)``, ``portland (seed=1)``). Options come from :func:`neulig.report.tags.options_of`.

Two layouts share the model: :func:`run_tables` gives one row per run; :func:`seed_tables` one row per
experiment group (runs whose options are the same but for the seed, newest run of each seed), whose cells
are means over the seeds with their sample standard deviation (n - 1; 0 with one seed).
"""
from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from neulig.report.store import RunRecord
from neulig.report.tags import SEED

REFERENCES = (("pretrained", "Pre-trained"), ("finetuned", "Fine-tuned"))  # (metric kind, row label)
TRIPLE = ("acc/merged", "acc/ensembled", "gap")  # Mer. / Ens. / Gap
ABSENT = "–"  # the value shown for an option a run did not record


@dataclass(frozen=True)
class Stat:
    """A cell's number: one run's value (``sd`` None) or a mean over seeds and its sample sd."""

    mean: float | None
    sd: float | None = None


@dataclass(frozen=True)
class Row:
    kind: str                         # "reference" | "method" | "granularity"
    label: str
    runs: tuple[RunRecord, ...]       # the run of the row, or one per seed (seed tables)
    cells: Mapping[str, tuple[Stat, ...]]  # dataset|"avg" -> (Mer., Ens., Gap) for a method row, (acc,) otherwise
    extra: tuple[Stat, ...] = ()      # the table's ``metrics``, in order (method rows; empty otherwise)

    @property
    def seeds(self) -> tuple[str, ...]:
        return tuple(sorted({r.seed for r in self.runs}, key=natural))


@dataclass(frozen=True)
class Table:
    experiment: str
    model: str
    datasets: tuple[str, ...]
    rows: tuple[Row, ...]
    notes: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()  # extra metric columns (``--metrics``), one metric each

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.datasets, "avg")


def natural(value: str) -> tuple:
    """Sort key that puts "2" before "10"."""
    return (0, int(value), "") if value.lstrip("-").isdigit() else (1, 0, value)


def table_key(run: RunRecord) -> tuple:
    return run.experiment, run.model, run.datasets


def by_table(runs: Iterable[RunRecord]) -> dict[tuple, list[RunRecord]]:
    tables: dict[tuple, list[RunRecord]] = {}
    for run in runs:
        tables.setdefault(table_key(run), []).append(run)
    return dict(sorted(tables.items()))


def experiment_of(run: RunRecord, with_seed: bool) -> tuple:
    """What makes two runs the same experiment: table, method and options (the seed too, if asked)."""
    return (*table_key(run), run.method,
            tuple(sorted((k, v) for k, v in run.options.items() if with_seed or k != SEED)))


def keep_latest(runs: list[RunRecord]) -> list[RunRecord]:
    """The newest run of each experiment, telling experiments apart by every option, seed included."""
    newest: dict[tuple, RunRecord] = {}
    for run in runs:
        key = experiment_of(run, with_seed=True)
        if key not in newest or run.start_time > newest[key].start_time:
            newest[key] = run
    return [r for r in runs if newest[experiment_of(r, with_seed=True)] is r]


def differing(options: list[Mapping[str, str]]) -> list[str]:
    """The options whose value is not the same in all of ``options`` (absent counts as a value)."""
    keys = set().union(*options) if options else set()
    return sorted(k for k in keys if len({o.get(k, ABSENT) for o in options}) > 1)


def label(method: str, options: Mapping[str, str], keys: list[str]) -> str:
    extra = ", ".join(f"{k}={options.get(k, ABSENT)}" for k in keys)
    return f"{method} ({extra})" if extra else method


def stat(values: list[float | None], over_seeds: bool) -> Stat:
    """One run's value as it is; over seeds, the mean and sample sd (0 with one seed); nothing when any
    run lacks the metric."""
    if not values or any(v is None for v in values):
        return Stat(None)
    if not over_seeds:
        return Stat(values[0])
    return Stat(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)


def cells(runs: tuple[RunRecord, ...], columns: tuple[str, ...], kinds: tuple[str, ...],
          over_seeds: bool) -> dict[str, tuple[Stat, ...]]:
    return {d: tuple(stat([r.metrics.get(f"{k}/{d}") for r in runs], over_seeds) for k in kinds) for d in columns}


def extra_cells(runs: tuple[RunRecord, ...], metrics: tuple[str, ...], over_seeds: bool) -> tuple[Stat, ...]:
    return tuple(stat([r.metrics.get(m) for r in runs], over_seeds) for m in metrics)


def reference_rows(members: list[RunRecord], columns: tuple[str, ...], over_seeds: bool) -> tuple[list[Row], list[str]]:
    """Pre-trained and Fine-tuned: the newest run's values, or the mean over seeds (newest run per seed);
    a note when other runs of the table logged different values."""
    rows, notes = [], []
    for kind, name in REFERENCES:
        holding = sorted((r for r in members if f"acc/{kind}/avg" in r.metrics), key=lambda r: -r.start_time)
        if not holding:
            continue
        if over_seeds:
            per_seed = {}
            for run in holding:
                per_seed.setdefault(run.seed, run)
            sources = tuple(per_seed[s] for s in sorted(per_seed, key=natural))
        else:
            sources = (holding[0],)
            others = [r for r in holding[1:] if any(r.metrics.get(f"acc/{kind}/{d}") !=
                                                    sources[0].metrics.get(f"acc/{kind}/{d}") for d in columns)]
            if others:
                notes.append(f"{name} is from run {sources[0].run_name} {sources[0].run_id[:8]} "
                             f"({sources[0].started}); {len(others)} other run(s) logged different values")
        rows.append(Row("reference", name, sources, cells(sources, columns, (f"acc/{kind}",), over_seeds)))
    return rows, notes


def method_labels(groups: list[tuple[str, Mapping[str, str]]]) -> list[str]:
    """Labels of (method, options) groups of one table: the options that differ among the method's groups."""
    keys = {m: differing([o for mm, o in groups if mm == m]) for m in {m for m, _ in groups}}
    return [label(m, o, keys[m]) for m, o in groups]


def run_tables(runs: list[RunRecord], granularities: bool = False, metrics: tuple[str, ...] = ()) -> list[Table]:
    """One row per run (and, with ``granularities``, one per extra accuracy kind it measured); ``metrics``:
    extra columns, each one logged metric of the row's run."""
    tables = []
    for (experiment, model, datasets), members in by_table(runs).items():
        columns = (*datasets, "avg")
        rows, notes = reference_rows(members, columns, over_seeds=False)
        labels = method_labels([(r.method, r.options) for r in members])
        for name, run in sorted(zip(labels, members), key=lambda p: (p[1].method, label_key(p[0]), -p[1].start_time)):
            rows.append(Row("method", name, (run,), cells((run,), columns, TRIPLE, False),
                            extra_cells((run,), metrics, False)))
            for kind, kind_label in run.kinds.items() if granularities else ():
                if f"acc/{kind}/avg" in run.metrics:
                    rows.append(Row("granularity", f"{name}, {kind_label}", (run,),
                                    cells((run,), columns, (f"acc/{kind}",), False)))
        tables.append(Table(experiment, model, datasets, tuple(rows), tuple(notes), metrics))
    return tables


def seed_tables(runs: list[RunRecord], metrics: tuple[str, ...] = ()) -> list[Table]:
    """One row per experiment group: means over its seeds (the newest run of each seed); ``metrics``: extra
    columns, each the mean and sd over the seeds of one logged metric."""
    tables = []
    for (experiment, model, datasets), members in by_table(runs).items():
        columns = (*datasets, "avg")
        groups: dict[tuple, dict[str, RunRecord]] = {}
        for run in sorted(members, key=lambda r: r.start_time):  # a re-run of a seed replaces the older one
            groups.setdefault(experiment_of(run, with_seed=False), {})[run.seed] = run
        chosen = [tuple(g[s] for s in sorted(g, key=natural)) for g in groups.values()]
        rows, notes = reference_rows([r for g in chosen for r in g], columns, over_seeds=True)
        labels = method_labels([(g[0].method, without_seed(g[0].options)) for g in chosen])
        for name, group in sorted(zip(labels, chosen), key=lambda p: (p[1][0].method, label_key(p[0]))):
            rows.append(Row("method", name, group, cells(group, columns, TRIPLE, True), extra_cells(group, metrics, True)))
        tables.append(Table(experiment, model, datasets, tuple(rows), tuple(notes), metrics))
    return tables


def without_seed(options: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in options.items() if k != SEED}


def label_key(text: str) -> tuple:
    """Rows of one method in natural order of their labels (``seed=2`` before ``seed=10``)."""
    return tuple(natural(part) for part in re.split(r"(\d+)", text))
