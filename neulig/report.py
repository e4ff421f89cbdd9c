"""``python -m neulig.report``: compare recorded runs as the paper's Table 2 (and its Figure 3 scatter).

Reads the runs that ``python -m neulig.run`` recorded in MLflow and prints one row per run: for every
dataset the merged accuracy, the ensembled accuracy and the gap between them (``Mer. / Ens. / Gap``),
then the same three for the average (``Avg``; the Avg gap is ``gap/avg`` = |Avg Ens. - Avg Mer.|, as
in the paper, not the mean of the per-dataset gaps). Pre-trained and Fine-tuned reference rows come
from the runs of the same backbone and data. Every number is the run's logged metric, which is the
value in its ``results.json``; only the formatting (2 decimals) is added.

mlflow and matplotlib are imported inside the functions that need them, so ``--help`` is instant.
"""
from __future__ import annotations

import argparse
import ast
import csv
import io
import sys
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_URI = "sqlite:///outputs/mlflow.db"
PROG = "python -m neulig.report"
DASH = "–"
REFERENCES = (("pretrained", "Pre-trained"), ("finetuned", "Fine-tuned"))  # (metric kind, row label)
KINDS_TAG = "neulig.accuracy_kinds"  # JSON {kind: label} of the extra accuracies a run measured

DESCRIPTION = """\
Compare neulig runs recorded in MLflow, in the layout of the paper's Table 2.

Each run of `python -m neulig.run` (one backbone x one dataset combination x one merge method) is one
row. For every dataset, and for the average over the datasets (Avg), the row shows three numbers:
  Mer.  accuracy (%) of the merged model            (metric acc/merged/<dataset>)
  Ens.  accuracy (%) of the method's ensemble        (metric acc/ensembled/<dataset>)
  Gap   |Ens. - Mer.| in percentage points            (metric gap/<dataset>; lower is better)
The Avg gap is |Avg Ens. - Avg Mer.| (metric gap/avg), exactly as the paper reports it; it is not
the mean of the per-dataset gaps. "–" means the method has no ensemble counterpart.
Above the method rows, "Pre-trained" (zero-shot backbone) and "Fine-tuned" (each dataset's own
expert) give the reference accuracies, taken from the newest matching run of the same backbone and
data. Numbers are the runs' own metrics (identical to their results.json), rounded for display.

Runs with different dataset lists go into separate tables; a "model" and a "data" column appear when
the selected runs span several backbones or dataset combinations, and a "run" column (run id and
start time) when one method has several runs (re-runs, seeds); use --latest to keep only the newest.
Only runs that finished successfully are shown unless you pass --all-statuses. Nested
per-combination runs (data.num_co_models) are left out: their parent run holds the means."""

EPILOG = """\
examples:
  python -m neulig.report                                   every finished run in outputs/mlflow.db
  python -m neulig.report --latest                          newest run per method, backbone and data
  python -m neulig.report --over-seeds                      mean and spread of each experiment over seeds
  python -m neulig.report --experiment neulig-embedded-tiny --scatter outputs/scatter.png
  python -m neulig.report --filter "tags.backbone = 'tiny'" --format csv > table.csv
  python -m neulig.report --filter "params.merge.loss = 'semi'"
  python -m neulig.report --tracking-uri http://127.0.0.1:5000   (a running `make ui` server)

filter syntax (MLflow search): compare params.<key>, tags.<key>, metrics.<key> or attributes.<name>
with =, !=, <, >, LIKE; join conditions with "and". Metric keys (they contain slashes) need backquotes,
e.g. "metrics.`acc/merged/avg` > 50". Useful keys: params.merge.name, params.model.name,
params.data.name, params.seed, tags.backbone, tags.merge, tags.datasets, attributes.run_name.

csv: one line per row with columns model, data, method, row (reference | method | granularity),
run_name, run_id, start_time, status, then "<dataset> Mer.", "<dataset> Ens.", "<dataset> Gap" for
every dataset and Avg. Reference and granularity rows have one accuracy per dataset: it is in the
Mer. column and their Ens./Gap cells are empty. Numbers are written at full precision unless
--decimals is given.

exit status: 0 on success; 2 with one line on stderr when the store does not exist, cannot be read,
an experiment name is unknown, the filter is invalid, or no run matches."""


class ReportError(Exception):
    """A user-facing problem, printed as one line."""


@dataclass
class Run:
    run_id: str
    run_name: str
    experiment: str
    status: str
    start_time: int
    method: str
    model: str
    data: str
    datasets: list[str]
    metrics: dict[str, float] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)  # extra accuracies (Portland's granularities): label
    params: dict[str, str] = field(default_factory=dict)  # the run's flattened config

    @property
    def started(self) -> str:
        import datetime as dt

        return dt.datetime.fromtimestamp(self.start_time / 1000).strftime("%Y-%m-%d %H:%M:%S")


@dataclass
class Row:
    kind: str                 # "reference" | "method" | "granularity"
    label: str
    run: Run
    cells: dict[str, tuple[float | None, float | None, float | None]]  # dataset|"avg" -> (mer, ens, gap)


# --------------------------------------------------------------------------------------------- store


def fail(message: str) -> NoReturn:  # noqa: F821
    print(f"neulig.report: error: {message}", file=sys.stderr)
    sys.exit(2)


def sqlite_path(uri: str) -> Path | None:
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):])
    return None


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__


def reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast when nothing listens at a server URI (any HTTP answer, even an error status, is fine)."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        pass
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise ReportError(f"no MLflow server answers at {uri} ({reason}); start one with `make ui` "
                          f"or pass another --tracking-uri") from err


def open_client(uri: str):
    """An MlflowClient on ``uri``; a missing sqlite file is an error (MLflow would create an empty one)."""
    path = sqlite_path(uri)
    if path is not None and not path.is_file():
        raise ReportError(f"no MLflow store at {path} (from --tracking-uri {uri}); run `python -m neulig.run` "
                          f"first or pass the store with --tracking-uri")
    if uri.startswith("file:") or (path is None and "://" not in uri):
        local = Path(uri[len("file:"):] if uri.startswith("file:") else uri)
        if not local.exists():
            raise ReportError(f"no MLflow store at {local} (from --tracking-uri {uri})")
    if uri.startswith(("http://", "https://")):
        reachable(uri)
    import logging

    for name in ("alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)
    except Exception as err:  # mlflow raises many types for a bad store
        raise ReportError(f"cannot read the MLflow store {uri!r} ({first_line(err)})") from err
    return client


def pick_experiments(client, names: list[str] | None) -> dict[str, str]:
    """experiment id -> name: the named ones (all must exist) or every active experiment."""
    experiments = []
    token = None
    while True:
        page = client.search_experiments(max_results=1000, page_token=token)
        experiments.extend(page)
        token = page.token
        if not token:
            break
    by_name = {e.name: e.experiment_id for e in experiments}
    if not names:
        return {e.experiment_id: e.name for e in experiments}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        available = ", ".join(sorted(n for n in by_name if n != "Default")) or "none"
        raise ReportError(f"unknown experiment {unknown[0]!r}; available: {available}")
    return {by_name[n]: n for n in names}


def split_experiment_name(name: str) -> tuple[str, str]:
    """``neulig-<data>-<model>`` -> (data, model); best effort, '?' when the name has another form."""
    parts = name.split("-")
    if len(parts) >= 3 and parts[0] == "neulig":
        return "-".join(parts[1:-1]), parts[-1]
    return "?", "?"


def parse_datasets(tags: dict, params: dict, metrics: dict) -> list[str]:
    if tags.get("datasets"):
        return [d for d in tags["datasets"].split(",") if d]
    raw = params.get("data.datasets")
    if raw:
        try:
            value = ast.literal_eval(raw)
            if isinstance(value, (list, tuple)) and value:
                return [str(d) for d in value]
        except (ValueError, SyntaxError):
            pass
    return sorted(k.split("/", 2)[2] for k in metrics if k.startswith("acc/merged/") and k != "acc/merged/avg")


def to_run(mlflow_run, experiment: str) -> Run:
    info, data = mlflow_run.info, mlflow_run.data
    tags, params, metrics = data.tags, data.params, dict(data.metrics)
    exp_data, exp_model = split_experiment_name(experiment)
    run_name = info.run_name or tags.get("mlflow.runName", info.run_id)
    method = params.get("merge.name") or tags.get("merge") or run_name.split("-")[0]
    return Run(run_id=info.run_id, run_name=run_name, experiment=experiment, status=info.status,
               start_time=int(info.start_time or 0), method=method,
               model=params.get("model.name") or tags.get("backbone") or exp_model,
               data=params.get("data.name") or exp_data,
               datasets=parse_datasets(tags, params, metrics), metrics=metrics, kinds=parse_kinds(tags),
               params=dict(params))


def parse_kinds(tags: dict) -> dict[str, str]:
    """The run's extra accuracy kinds and their labels, as its MLflow tag records them."""
    import json

    try:
        kinds = json.loads(tags.get(KINDS_TAG, "{}"))
    except json.JSONDecodeError:
        return {}
    return {str(k): str(v) for k, v in kinds.items()} if isinstance(kinds, dict) else {}


def load_runs(client, experiments: dict[str, str], user_filter: str | None, all_statuses: bool) -> list[Run]:
    from mlflow.exceptions import MlflowException

    clauses = [f for f in ((user_filter or "").strip(), "" if all_statuses else "attributes.status = 'FINISHED'") if f]
    filter_string = " and ".join(clauses)
    runs: list[Run] = []
    ids = list(experiments)
    try:
        for i in range(0, len(ids), 100):  # search_runs takes at most 100 experiment ids per call
            token = None
            while True:
                page = client.search_runs(ids[i:i + 100], filter_string=filter_string, max_results=1000,
                                          order_by=["attributes.start_time DESC"], page_token=token)
                runs.extend(to_run(r, experiments[r.info.experiment_id]) for r in page
                            if "mlflow.parentRunId" not in r.data.tags)
                token = page.token
                if not token:
                    break
    except MlflowException as err:
        if user_filter:
            raise ReportError(f"invalid --filter {user_filter!r} ({first_line(err)})") from err
        raise ReportError(f"cannot search runs ({first_line(err)})") from err
    return [r for r in runs if "acc/merged/avg" in r.metrics]


def keep_latest(runs: list[Run]) -> list[Run]:
    newest: dict[tuple[str, str, str], Run] = {}
    for run in runs:
        key = (run.method, run.model, run.data)
        if key not in newest or run.start_time > newest[key].start_time:
            newest[key] = run
    return [r for r in runs if newest[(r.method, r.model, r.data)] is r]


# --------------------------------------------------------------------------------------------- rows


def method_cells(run: Run) -> dict[str, tuple]:
    m = run.metrics
    cells = {}
    for d in run.datasets + ["avg"]:
        cells[d] = (m.get(f"acc/merged/{d}"), m.get(f"acc/ensembled/{d}"), m.get(f"gap/{d}"))
    return cells


def single_cells(run: Run, kind: str) -> dict[str, tuple]:
    return {d: (run.metrics.get(f"acc/{kind}/{d}"), None, None) for d in run.datasets + ["avg"]}


@dataclass
class Table:
    datasets: list[str]
    rows: list[Row]
    notes: list[str]


def build_tables(runs: list[Run], granularities: bool = False) -> list[Table]:
    """One table per dataset list; per (model, data): reference rows, then one row per run."""
    groups: dict[tuple[str, ...], list[Run]] = {}
    for run in runs:
        groups.setdefault(tuple(run.datasets), []).append(run)
    tables = []
    for datasets, members in groups.items():
        rows: list[Row] = []
        notes: list[str] = []
        for model, data in sorted({(r.model, r.data) for r in members}):
            mine = sorted((r for r in members if (r.model, r.data) == (model, data)),
                          key=lambda r: (r.method, -r.start_time))
            for kind, label in REFERENCES:
                with_ref = sorted((r for r in mine if f"acc/{kind}/avg" in r.metrics), key=lambda r: -r.start_time)
                if not with_ref:
                    continue
                source = with_ref[0]
                rows.append(Row("reference", label, source, single_cells(source, kind)))
                differing = [r for r in with_ref[1:] if any(
                    r.metrics.get(f"acc/{kind}/{d}") != source.metrics.get(f"acc/{kind}/{d}")
                    for d in list(datasets) + ["avg"])]
                if differing:
                    notes.append(f"{label} ({model}/{data}) is from run {source.run_name} {source.run_id[:8]} "
                                 f"({source.started}); {len(differing)} other run(s) logged different values")
            for run in mine:
                rows.append(Row("method", run.method, run, method_cells(run)))
                if granularities:
                    for kind, label in run.kinds.items():
                        if f"acc/{kind}/avg" in run.metrics:
                            rows.append(Row("granularity", f"{run.method}, {label}", run, single_cells(run, kind)))
        tables.append(Table(list(datasets), rows, notes))
    return tables


# --------------------------------------------------------------------------------------------- output


def fmt(value: float | None, decimals: int | None, missing: str) -> str:
    if value is None:
        return missing
    return repr(float(value)) if decimals is None else f"{value:.{decimals}f}"


def render_markdown(tables: list[Table], decimals: int, show_model: bool, show_data: bool) -> str:
    out = []
    for table in tables:
        runs = [r for r in table.rows if r.kind == "method"]
        keys = [(r.label, r.run.model, r.run.data) for r in runs]
        show_run = len(set(keys)) < len(keys)
        out.append(f"datasets: {', '.join(table.datasets)}   (accuracy %, Gap = |Ens. - Mer.|, "
                   f"Avg Gap = |Avg Ens. - Avg Mer.|)\n")
        head = ["method"] + (["model"] if show_model else []) + (["data"] if show_data else [])
        head += [f"{d} Mer. / Ens. / Gap" for d in table.datasets] + ["Avg Mer. / Ens. / Gap"]
        head += ["run"] if show_run else []
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in table.rows:
            cells = [row.label] + ([row.run.model] if show_model else []) + ([row.run.data] if show_data else [])
            for d in table.datasets + ["avg"]:
                mer, ens, gap = row.cells[d]
                if row.kind == "method":
                    cells.append(" / ".join(fmt(v, decimals, DASH) for v in (mer, ens, gap)))
                else:
                    cells.append(fmt(mer, decimals, DASH))
            if show_run:
                cells.append(f"{row.run.run_id[:8]} {row.run.started}" if row.kind == "method" else "")
            lines.append("| " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
        out.extend(f"\nnote: {n}" for n in table.notes)
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def render_csv(tables: list[Table], decimals: int | None) -> str:
    datasets: list[str] = []
    for table in tables:
        datasets.extend(d for d in table.datasets if d not in datasets)
    head = ["model", "data", "method", "row", "run_name", "run_id", "start_time", "status"]
    for d in datasets + ["Avg"]:
        head += [f"{d} Mer.", f"{d} Ens.", f"{d} Gap"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(head)
    for table in tables:
        for row in table.rows:
            line = [row.run.model, row.run.data, row.label, row.kind, row.run.run_name, row.run.run_id,
                    row.run.started, row.run.status]
            for d in datasets + ["avg"]:
                mer, ens, gap = row.cells.get(d, (None, None, None))
                line += [fmt(v, decimals, "") for v in (mer, ens, gap)]
            writer.writerow(line)
    return buffer.getvalue()


def scatter_points(runs: list[Run]) -> list[dict]:
    return [{"method": r.method, "merged": r.metrics["acc/merged/avg"], "ensembled": r.metrics.get("acc/ensembled/avg")}
            for r in sorted(runs, key=lambda r: (r.method, r.start_time))]


# --------------------------------------------------------------------------------------------- CLI


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tracking-uri", default=DEFAULT_URI, metavar="URI",
                   help=f"the MLflow store to read: a sqlite file, a folder or a server URL (default: {DEFAULT_URI}, "
                        "the store `python -m neulig.run` writes when started from the repository root)")
    p.add_argument("--experiment", nargs="+", action="extend", metavar="NAME",
                   help="only these experiments (one per study, named neulig-<data>-<model>); repeatable. "
                        "Default: every experiment in the store")
    p.add_argument("--filter", metavar="EXPR",
                   help="only runs matching this MLflow search expression, e.g. \"tags.backbone = 'tiny'\" "
                        "(see 'filter syntax' below)")
    p.add_argument("--format", choices=("markdown", "csv"), default="markdown",
                   help="markdown: tables like the paper's Table 2 (default); csv: one flat table for spreadsheets "
                        "and pandas")
    p.add_argument("--scatter", metavar="PATH.png", type=Path,
                   help="also draw the paper's Figure 3: each run's Avg merged accuracy (x) against its Avg "
                        "ensembled accuracy (y), one marker shape per method, with the line y = x (no gap)")
    p.add_argument("--latest", action="store_true",
                   help="keep only the newest run of each (method, backbone, data); older re-runs are hidden")
    p.add_argument("--all-statuses", action="store_true",
                   help="also show runs that failed or are still running (default: finished runs only)")
    p.add_argument("--granularities", action="store_true",
                   help="add Portland's extra rows: merged per test batch, one merge per dataset, one merge for all "
                        "(metrics acc/merged_batch, acc/merged_task, acc/merged_global)")
    p.add_argument("--over-seeds", action="store_true",
                   help="one row per experiment (runs whose config differs only in seed): per dataset the mean "
                        "over seeds, for Avg mean ± sd, and the seeds (markdown only)")
    p.add_argument("--upload", metavar="RUN_DIR",
                   help="send a run's record that its MLflow store could not take (RUN_DIR/mlflow_record.json) "
                        "to that store, or to --tracking-uri; sending it twice creates nothing new")
    p.add_argument("--decimals", type=int, metavar="N",
                   help="digits after the decimal point (default: 2 for markdown, full precision for csv)")
    return p


def report(args: argparse.Namespace) -> str:
    client = open_client(args.tracking_uri)
    experiments = pick_experiments(client, args.experiment)
    if not experiments:
        raise ReportError(f"the store {args.tracking_uri} holds no experiments")
    runs = load_runs(client, experiments, args.filter, args.all_statuses)
    if args.latest:
        runs = keep_latest(runs)
    if not runs:
        scope = f"experiment(s) {', '.join(experiments.values())}" if args.experiment else args.tracking_uri
        extra = f" with filter {args.filter!r}" if args.filter else ""
        status = "" if args.all_statuses else " (finished runs only; --all-statuses shows the others)"
        raise ReportError(f"no runs matched in {scope}{extra}{status}")
    if args.over_seeds:
        from neulig.report_seeds import render

        return render(runs, 2 if args.decimals is None else args.decimals, DASH)
    tables = build_tables(runs, args.granularities)
    if args.scatter is not None:
        from neulig.plots import scatter_png

        names = sorted({f"{r.model}/{r.data}" for r in runs})
        scatter_png(scatter_points(runs), args.scatter, title=", ".join(names))
    if args.format == "csv":
        return render_csv(tables, args.decimals)
    show_model = len({r.model for r in runs}) > 1
    show_data = len({r.data for r in runs}) > 1
    return render_markdown(tables, 2 if args.decimals is None else args.decimals, show_model, show_data)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a == "--upload" or a.startswith("--upload=") for a in argv):
        from neulig.tracking.upload import main as upload

        return upload(argv)
    args = parser().parse_args(argv)
    if args.decimals is not None and not 0 <= args.decimals <= 17:
        fail(f"--decimals must be between 0 and 17, got {args.decimals}")
    if args.over_seeds and (args.latest or args.format != "markdown" or args.scatter or args.granularities):
        fail("--over-seeds shows every seed's run as one markdown row: drop --latest, --format csv, --scatter "
             "and --granularities")
    if args.scatter is not None and args.scatter.suffix.lower() != ".png":
        fail(f"--scatter must name a .png file, got {str(args.scatter)!r}")
    from neulig.tracking.http import REPORT, policy

    try:
        with policy(REPORT):  # MLflow's own default retries a failing request for minutes
            text = report(args)
    except ReportError as err:
        fail(str(err))
    sys.stdout.write(text)
    if args.scatter is not None:
        print(f"scatter: {args.scatter}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
