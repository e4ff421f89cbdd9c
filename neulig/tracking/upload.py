"""``python -m neulig.report --upload <run dir>``: send a run's record that its MLflow store could not take.

A run whose tracking server stopped answering finishes anyway and keeps its record in
``<run dir>/mlflow_record.json`` (``neulig.tracking.record``). This command sends it to the store the run
used (or to ``--tracking-uri``): the MLflow run the record names, found by its tag ``neulig.run_id`` (created
if that store has none), gets whatever it lacks and ends with the record's status. Sending twice creates
nothing new: a run whose tag ``neulig.record`` says ``complete`` is left as it is.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from neulig.tracking.record import RECORD_FILE, RUN_ID_TAG, SENT_TAG, RunRecord, send

PROG = "python -m neulig.report --upload"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    p.add_argument("--upload", metavar="RUN_DIR", type=Path, required=True,
                   help=f"the run's directory (it holds {RECORD_FILE})")
    p.add_argument("--tracking-uri", metavar="URI", help="send to this store instead of the run's own")
    return p


def find_run(client, experiment_id: str, record_id: str):
    """The top-level run tagged with ``record_id``, or None."""
    found = client.search_runs([experiment_id], f"tags.`{RUN_ID_TAG}` = '{record_id}'", max_results=10)
    return next((r for r in found if "mlflow.parentRunId" not in r.data.tags), None)


def upload(run_dir: Path, tracking_uri: str | None = None) -> tuple[str, bool]:
    """Send ``run_dir``'s record; returns (MLflow run id, whether anything was sent)."""
    from mlflow.tracking import MlflowClient

    record = RunRecord.read(run_dir / RECORD_FILE)
    uri = tracking_uri or record.tracking_uri
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(record.experiment_name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(
        record.experiment_name, artifact_location=record.artifact_location if uri == record.tracking_uri else None)
    run = find_run(client, experiment_id, record.record_id)
    if run is not None and run.data.tags.get(SENT_TAG) == "complete":
        return run.info.run_id, False
    if run is None:
        run = client.create_run(experiment_id, run_name=record.run_name,
                                tags={**record.tags, RUN_ID_TAG: record.record_id})
    send(client, run.info.run_id, record, run_dir.resolve())
    return run.info.run_id, True


def main(argv: list[str]) -> int:
    from neulig.tracking.http import REPORT, policy

    args = parser().parse_args(argv)
    if not (args.upload / RECORD_FILE).is_file():
        print(f"{PROG}: error: {args.upload / RECORD_FILE} does not exist: only a run whose MLflow store stopped "
              "answering keeps its record there", file=sys.stderr)
        return 2
    try:
        with policy(REPORT):
            run_id, sent = upload(args.upload, args.tracking_uri)
    except Exception as err:  # noqa: BLE001 - an unreadable record or an unreachable store: one line
        from neulig.errors import first_line

        print(f"{PROG}: error: {args.upload}: {first_line(err)}", file=sys.stderr)
        return 1
    what = "sent" if sent else "already in the store, nothing sent"
    store = args.tracking_uri or RunRecord.read(args.upload / RECORD_FILE).tracking_uri
    print(f"{args.upload}: {what} (MLflow run {run_id} in {store})")
    return 0
