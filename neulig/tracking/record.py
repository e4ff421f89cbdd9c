"""A run's MLflow record, as data: kept in the run dir when the store cannot be reached, and sent by one
function whether the run is live or the record is uploaded later.

:func:`send` is idempotent: it logs only what the MLflow run does not hold yet (params, metrics, curve
points, nested runs, tags), so sending a record twice, or after a partial send, creates nothing new.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

RECORD_FILE = "mlflow_record.json"
FORMAT = "neulig.mlflow-record/1"
RUN_ID_TAG = "neulig.run_id"  # neulig's own id of a run: finds it again in any store
ERROR_TAG = "neulig.error"  # the one-line error of a FAILED or KILLED run
SENT_TAG = "neulig.record"  # "complete" once everything of the record is in the store
PARENT_TAG = "mlflow.parentRunId"


@dataclass
class Child:
    """A nested run: one dataset combination of a run with ``data.num_co_models``."""

    name: str
    params: dict[str, str]
    metrics: dict[str, float]


@dataclass
class RunRecord:
    tracking_uri: str
    experiment_name: str
    run_name: str
    record_id: str
    tags: dict[str, str]
    artifact_location: str | None = None
    run_id: str | None = None  # MLflow's id, once the store has created the run
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    curves: list[list] = field(default_factory=list)  # [key, value, timestamp ms, step]
    children: list[Child] = field(default_factory=list)
    artifacts: list[str] = field(default_factory=list)  # relative to the run dir (or absolute)
    status: str = "RUNNING"
    error: str | None = None
    traceback: str | None = None

    def write(self, run_dir: Path) -> Path:
        """Write ``<run_dir>/mlflow_record.json`` (a temp file renamed, never half-written)."""
        path = Path(run_dir) / RECORD_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temp.write_text(json.dumps({"format": FORMAT, **asdict(self)}, indent=1))
        temp.replace(path)
        return path

    @classmethod
    def read(cls, path: Path) -> RunRecord:
        data = json.loads(Path(path).read_text())
        if data.pop("format", None) != FORMAT:
            raise ValueError(f"not a neulig MLflow record (format {FORMAT!r} expected)")
        data["children"] = [Child(**c) for c in data.get("children", [])]
        return cls(**data)


def now_ms() -> int:
    return int(time.time() * 1000)


def send(client, run_id: str, record: RunRecord, root: Path | None) -> None:
    """Bring the MLflow run ``run_id`` up to ``record`` and end it with the record's status: tags, params,
    final metrics, curve points and nested runs it lacks, the error (tag + ``error.txt``) and the files."""
    from mlflow.entities import Metric, Param

    run = client.get_run(run_id)
    tags = {**record.tags, RUN_ID_TAG: record.record_id}
    if record.error:
        tags[ERROR_TAG] = record.error
    for key, value in tags.items():
        if run.data.tags.get(key) != value:
            client.set_tag(run_id, key, value)
    if record.error is None and ERROR_TAG in run.data.tags:  # e.g. marked KILLED while its record waited
        client.delete_tag(run_id, ERROR_TAG)
    params = [Param(k, v) for k, v in record.params.items() if k not in run.data.params]
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i : i + 100])
    send_curves(client, run_id, record.curves, run.data.metrics)
    stamp = now_ms()
    metrics = [Metric(k, float(v), stamp, 0) for k, v in record.metrics.items() if k not in run.data.metrics]
    for i in range(0, len(metrics), 500):
        client.log_batch(run_id, metrics=metrics[i : i + 500])
    for child in record.children:
        send_child(client, run, record, child)
    if record.traceback:
        client.log_text(run_id, record.traceback, "error.txt")
    for name in record.artifacts:
        send_artifact(client, run_id, Path(name) if root is None else root / name, root)
    client.set_tag(run_id, SENT_TAG, "complete")
    client.set_terminated(run_id, record.status)


def send_curves(client, run_id: str, curves: list[list], present: dict[str, float]) -> None:
    """The curve points whose (key, step) the run does not hold yet."""
    from mlflow.entities import Metric

    have: dict[str, set[int]] = {}
    for key in {c[0] for c in curves} & set(present):
        have[key] = {m.step for m in client.get_metric_history(run_id, key)}
    missing = [Metric(k, float(v), int(t), int(s)) for k, v, t, s in curves if int(s) not in have.get(k, set())]
    for i in range(0, len(missing), 500):
        client.log_batch(run_id, metrics=missing[i : i + 500])


def send_child(client, parent, record: RunRecord, child: Child) -> None:
    """One nested run (finished), found again by its tag if an earlier send created it."""
    from mlflow.entities import Metric, Param

    child_id = f"{record.record_id}/{child.name}"
    found = client.search_runs([parent.info.experiment_id], f"tags.`{RUN_ID_TAG}` = '{child_id}'", max_results=1)
    if found:
        return
    tags = {**record.tags, PARENT_TAG: parent.info.run_id, RUN_ID_TAG: child_id}
    run_id = client.create_run(parent.info.experiment_id, run_name=f"{record.run_name}/{child.name}",
                               tags=tags).info.run_id
    stamp = now_ms()
    client.log_batch(run_id, metrics=[Metric(k, float(v), stamp, 0) for k, v in child.metrics.items()],
                     params=[Param(k, v) for k, v in child.params.items()])
    client.set_terminated(run_id, "FINISHED")


def artifact_folder(path: Path, root: Path | None) -> str | None:
    """The artifact folder of ``path``: its parent relative to ``root``, or None (the top level)."""
    if root is None or not path.parent.is_relative_to(root) or path.parent == root:
        return None
    return path.parent.relative_to(root).as_posix()


def send_artifact(client, run_id: str, path: Path, root: Path | None) -> None:
    """A file keeps its folder under ``root``; a folder (a Hugging Face export) keeps its name."""
    if path.is_dir():
        client.log_artifacts(run_id, str(path), artifact_folder(path / "_", root))
    elif path.is_file():
        client.log_artifact(run_id, str(path), artifact_folder(path, root))
