"""Rendering the table model: markdown tables, one flat CSV, and the points of the scatter (Figure 3).

Every number is a run's logged metric (or a mean of them over seeds); only the formatting is added.
"""
from __future__ import annotations

import csv
import io

from neulig.report.store import RunRecord
from neulig.report.tables import Row, Stat, Table

DASH = "–"
LEGEND = "accuracy %, Gap = |Ens. - Mer.|, Avg Gap = |Avg Ens. - Avg Mer.|"
SEEDS_LEGEND = "accuracy %, mean over seeds; Avg: mean ± sd over seeds; Gap = |Ens. - Mer.|"


def fmt(value: float | None, decimals: int | None, missing: str) -> str:
    if value is None:
        return missing
    return repr(float(value)) if decimals is None else f"{value:.{decimals}f}"


def stat_text(value: Stat, decimals: int, spread: bool) -> str:
    if value.mean is None:
        return DASH
    text = fmt(value.mean, decimals, DASH)
    return text + f" ± {fmt(value.sd, decimals, DASH)}" if spread and value.sd is not None else text


def title(table: Table) -> str:
    data = sorted({r.data for row in table.rows for r in row.runs})
    return (f"experiment: {table.experiment}   model: {table.model}   data: {', '.join(data)} "
            f"({', '.join(table.datasets)})")


def markdown(tables: list[Table], decimals: int, over_seeds: bool = False) -> str:
    """One markdown table per experiment. Per run: a ``run`` column (id and start time) when two rows
    of a table would otherwise read the same. Over seeds: a ``seeds`` column listing the seeds a row averages."""
    out = []
    for table in tables:
        methods = [r.label for r in table.rows if r.kind == "method"]
        show_run = not over_seeds and len(set(methods)) < len(methods)
        head = ["method", *(f"{d} Mer. / Ens. / Gap" for d in table.datasets), "Avg Mer. / Ens. / Gap"]
        head += list(table.metrics)
        head += ["seeds"] if over_seeds else ["run"] if show_run else []
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in table.rows:
            line = [row.label, *(" / ".join(stat_text(s, decimals, over_seeds and d == "avg") for s in row.cells[d])
                                 for d in table.columns)]
            line += [stat_text(s, decimals, over_seeds) for s in row.extra or [Stat(None)] * len(table.metrics)]
            if over_seeds:
                line.append(",".join(row.seeds))
            elif show_run:
                line.append(f"{row.runs[0].run_id[:8]} {row.runs[0].started}" if row.kind == "method" else "")
            lines.append("| " + " | ".join(line) + " |")
        out.append(f"{title(table)}\n({SEEDS_LEGEND if over_seeds else LEGEND})\n\n" + "\n".join(lines))
        out.extend(f"note: {n}" for n in table.notes)
    return "\n\n".join(out) + "\n"


CSV_HEAD = ("model", "data", "method", "row", "run_name", "run_id", "start_time", "status", "experiment", "seed")


def csv_text(tables: list[Table], decimals: int | None) -> str:
    """One line per row of every table; a reference or granularity row's single accuracy is in the Mer.
    columns, its Ens. and Gap cells empty."""
    datasets: list[str] = []
    for table in tables:
        datasets.extend(d for d in table.datasets if d not in datasets)
    head = list(CSV_HEAD)
    for d in [*datasets, "Avg"]:
        head += [f"{d} Mer.", f"{d} Ens.", f"{d} Gap"]
    metrics = list(dict.fromkeys(m for table in tables for m in table.metrics))
    head += metrics
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(head)
    for table in tables:
        for row in table.rows:
            writer.writerow(csv_line(table, row, datasets, decimals, metrics))
    return buffer.getvalue()


def csv_line(table: Table, row: Row, datasets: list[str], decimals: int | None, metrics: list[str]) -> list[str]:
    run = row.runs[0]
    line = [run.model, run.data, row.label, row.kind, run.run_name, run.run_id, run.started, run.status,
            table.experiment, run.seed]
    for d in [*datasets, "avg"]:
        values = [s.mean for s in row.cells.get(d, ())]
        line += [fmt(v, decimals, "") for v in (values + [None, None, None])[:3]]
    extra = dict(zip(table.metrics, row.extra))
    return line + [fmt(extra[m].mean if m in extra else None, decimals, "") for m in metrics]


def scatter_points(runs: list[RunRecord]) -> list[dict]:
    return [{"method": r.method, "merged": r.metrics["acc/merged/avg"], "ensembled": r.metrics.get("acc/ensembled/avg")}
            for r in sorted(runs, key=lambda r: (r.method, r.start_time))]
