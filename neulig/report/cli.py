"""The command line of ``python -m neulig.report``: options, their checks, and the one action they select.

:func:`main` parses, checks the combination of options (one line and exit 2 when wrong), then runs one
action: today printing the tables (:func:`tables_text`). A further action (a flag or subcommand that is
not about tables) gets its own function and its own branch in :func:`main`, beside that one.

mlflow and matplotlib are imported inside the functions that need them, so ``--help`` is instant.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from neulig.report.store import ReportError, RunRecord

DEFAULT_URI = "sqlite:///outputs/mlflow.db"
PROG = "python -m neulig.report"

DESCRIPTION = """\
Compare neulig runs recorded in MLflow, in the layout of the paper's Table 2.

One table per experiment: the runs of one MLflow experiment (one study, e.g. neulig-embedded-tiny) on one
backbone and one dataset list. Each run of `python -m neulig.run` (one backbone x one dataset combination
x one merge method) is one row. For every dataset, and for the average over the datasets (Avg), the row
shows three numbers:
  Mer.  accuracy (%) of the merged model            (metric acc/merged/<dataset>)
  Ens.  accuracy (%) of the method's ensemble        (metric acc/ensembled/<dataset>)
  Gap   |Ens. - Mer.| in percentage points            (metric gap/<dataset>; lower is better)
The Avg gap is |Avg Ens. - Avg Mer.| (metric gap/avg), exactly as the paper reports it; it is not
the mean of the per-dataset gaps. "–" means the method has no ensemble counterpart.
Above the method rows, "Pre-trained" (zero-shot backbone) and "Fine-tuned" (each dataset's own
expert) give the reference accuracies, taken from the newest run of the table. Numbers are the runs'
own metrics (identical to their results.json), rounded for display.

A row is labelled by its method and by the options in which that method's rows of the table differ,
e.g. "portland (merge.views=0)" or "average (align.method=weight, seed=1)"; options are read from the
run's tags (config.<option>; params for runs recorded before those tags), never from run names. A "run"
column (run id and start time) appears when two rows would read the same (re-runs); --latest keeps
only the newest run of each experiment and seed. Only runs that finished successfully are shown unless
you pass --all-statuses. Nested per-combination runs (data.num_co_models) are left out: their parent
run holds the means."""

EPILOG = """\
examples:
  python -m neulig.report                                   every finished run in outputs/mlflow.db
  python -m neulig.report --latest                          newest run per experiment and seed
  python -m neulig.report --over-seeds                      mean and spread of each experiment over seeds
  python -m neulig.report --over-seeds --metrics beta/own_weight/avg   with a column of Portland's routing
  python -m neulig.report --experiment neulig-embedded-tiny --scatter outputs/scatter.png
  python -m neulig.report --filter "tags.backbone = 'tiny'" --format csv > table.csv
  python -m neulig.report --filter "params.merge.loss = 'semi'"
  python -m neulig.report --filter "tags.`config.align.method` = 'weight'"
  python -m neulig.report --tracking-uri http://127.0.0.1:5000   (a running `make ui` server)

filter syntax (MLflow search): compare params.<key>, tags.<key>, metrics.<key> or attributes.<name>
with =, !=, <, >, LIKE; join conditions with "and". Keys with slashes or several dots need backquotes,
e.g. "metrics.`acc/merged/avg` > 50". Useful keys: params.merge.name, params.model.name,
params.data.name, params.seed, tags.backbone, tags.merge, tags.datasets, tags.`config.<option>`,
attributes.run_name.

csv: one line per row with columns model, data, method (the row's label), row (reference | method |
granularity), run_name, run_id, start_time, status, experiment, seed, then "<dataset> Mer.",
"<dataset> Ens.", "<dataset> Gap" for every dataset and Avg. Reference and granularity rows have one
accuracy per dataset: it is in the Mer. column and their Ens./Gap cells are empty. Numbers are
written at full precision unless --decimals is given.

exit status: 0 on success; 2 with one line on stderr when the store does not exist, cannot be read,
an experiment name is unknown, the filter is invalid, the options do not go together, or no run
matches."""


def fail(message: str) -> NoReturn:
    print(f"neulig.report: error: {message}", file=sys.stderr)
    sys.exit(2)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tracking-uri", default=DEFAULT_URI, metavar="URI",
                   help=f"the MLflow store to read: a sqlite file, a folder or a server URL (default: {DEFAULT_URI}, "
                        "the store `python -m neulig.run` writes when started from the repository root)")
    p.add_argument("--experiment", nargs="+", action="extend", metavar="NAME",
                   help="only these experiments (one per study; by default named neulig-<data>-<model>); repeatable. "
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
                   help="keep only the newest run of each experiment and seed: runs are the same experiment when every "
                        "option that can change a number (method, backbone, data, align, k, seed, ...) is the same; "
                        "older re-runs are hidden")
    p.add_argument("--all-statuses", action="store_true",
                   help="also show runs that failed or are still running (default: finished runs only)")
    p.add_argument("--granularities", action="store_true",
                   help="add Portland's extra rows: merged per test batch, one merge per dataset, one merge for all "
                        "(metrics acc/merged_batch, acc/merged_task, acc/merged_global)")
    p.add_argument("--over-seeds", action="store_true",
                   help="one row per experiment (runs whose options differ only in seed; the newest run of each seed): per "
                        "dataset the mean over seeds, for Avg mean ± sd, and a seeds column listing the seeds "
                        "the row averages (markdown only)")
    p.add_argument("--metrics", nargs="+", action="extend", default=[], metavar="KEY",
                   help="add a column for each of these logged metrics (over seeds: mean ± sd), e.g. "
                        "acc/val_merged/avg beta/own_weight/avg; '–' where a run did not log it")
    p.add_argument("--upload", metavar="RUN_DIR",
                   help="send a run's record that its MLflow store could not take (RUN_DIR/mlflow_record.json) "
                        "to that store, or to --tracking-uri; sending it twice creates nothing new")
    p.add_argument("--decimals", type=int, metavar="N",
                   help="digits after the decimal point (default: 2 for markdown, full precision for csv)")
    return p


def selected_runs(args: argparse.Namespace) -> list[RunRecord]:
    """The runs the options select (newest first); a ReportError when none."""
    from neulig.report.store import load_runs, open_client, pick_experiments
    from neulig.report.tables import keep_latest

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
    return runs


def tables_text(args: argparse.Namespace) -> str:
    """The tables (markdown or csv) of the selected runs; draws the scatter when asked."""
    from neulig.report import render, tables

    runs = selected_runs(args)
    decimals = 2 if args.decimals is None and args.format == "markdown" else args.decimals
    if args.over_seeds:
        return render.markdown(tables.seed_tables(runs, tuple(args.metrics)), decimals, over_seeds=True)
    if args.scatter is not None:
        from neulig.plots import scatter_png

        names = sorted({f"{r.model}/{r.data}" for r in runs})
        scatter_png(render.scatter_points(runs), args.scatter, title=", ".join(names))
    built = tables.run_tables(runs, args.granularities, tuple(args.metrics))
    return render.csv_text(built, decimals) if args.format == "csv" else render.markdown(built, decimals)


def check(args: argparse.Namespace) -> None:
    """Options that do not go together, or values out of range: one line, exit 2."""
    if args.decimals is not None and not 0 <= args.decimals <= 17:
        fail(f"--decimals must be between 0 and 17, got {args.decimals}")
    if args.over_seeds and (args.latest or args.format != "markdown" or args.scatter or args.granularities):
        fail("--over-seeds shows every seed's run as one markdown row: drop --latest, --format csv, --scatter "
             "and --granularities")
    if args.scatter is not None and args.scatter.suffix.lower() != ".png":
        fail(f"--scatter must name a .png file, got {str(args.scatter)!r}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a == "--upload" or a.startswith("--upload=") for a in argv):
        from neulig.tracking.upload import main as upload

        return upload(argv)
    args = parser().parse_args(argv)
    check(args)
    from neulig.tracking.http import REPORT, policy

    try:
        with policy(REPORT):  # MLflow's own default retries a failing request for minutes
            text = tables_text(args)
    except ReportError as err:
        fail(str(err))
    sys.stdout.write(text)
    if args.scatter is not None:
        print(f"scatter: {args.scatter}", file=sys.stderr)
    return 0
