"""MLflowReporter: a Lightning callback that records one neulig run in MLflow, and ends it with a status.

It is attached to every Trainer of the run (fine-tuning, Portland) and logs their epoch curves, then
``report()`` logs the contract metrics of docs/design.md ("Metric contract"), the flattened config as params,
tags, and the run's files as artifacts, and ends the run FINISHED. Every other way out ends it too
(``end``): FAILED with the one-line error as the tag ``neulig.error`` and the traceback as ``error.txt``,
KILLED for an interruption (``neulig.utils.signals``).

The store is checked before any training (``open``), so an unreachable tracking URI fails in seconds with
one line; the same check marks KILLED the runs of this host whose process is gone
(``neulig.tracking.liveness``). After that, a store that stops answering (past the retries of
``logger.http_retries``) no longer stops the run: everything is kept in a record
(``neulig.tracking.record``), written to the run dir with a one-line warning, and sent later with
``python -m neulig.report --upload <run dir>``.
"""
from __future__ import annotations

import sys
import traceback
import uuid
from contextlib import contextmanager
from pathlib import Path

import lightning as L

from neulig.errors import NeuligError, first_line
from neulig.tracking import http
from neulig.tracking.record import ERROR_TAG, RECORD_FILE, RUN_ID_TAG, Child, RunRecord, now_ms, send


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = str(value)[:6000]
    return out


class MLflowReporter(L.Callback):
    def __init__(self, tracking_uri: str, experiment_name: str, run_name: str, tags: dict[str, str] | None = None,
                 run_dir: Path | None = None, policy: http.HttpPolicy = http.REPORT):
        self.tracking_uri, self.experiment_name, self.run_name = tracking_uri, experiment_name, run_name
        self.tags = tags or {}
        self.run_dir, self.policy = run_dir, policy
        self.client = None
        self.run_id: str | None = None
        self.lost: str | None = None  # why the store stopped answering, once it did
        self.record = RunRecord(tracking_uri, experiment_name, run_name, uuid.uuid4().hex, dict(self.tags),
                                self.artifact_location())
        self._offsets: dict[str, int] = {}

    def open(self) -> None:
        """Connect, create the experiment and the run; one clear line if the store is unreachable. Runs of
        this host left RUNNING by a process that is gone are marked KILLED, in one line."""
        import logging

        from mlflow.tracking import MlflowClient

        from neulig.tracking.liveness import process_tags, reap, reaped_line
        from neulig.utils.log import log

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # schema-creation INFO lines are not news
        logging.getLogger("alembic").setLevel(logging.WARNING)
        self.record.tags.update(process_tags())
        try:
            with http.policy(http.CHECK), self.store_lock():  # parallel jobs must not race on schema creation
                self.client = MlflowClient(self.tracking_uri)
                experiment = self.client.get_experiment_by_name(self.experiment_name)
                experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(
                    self.experiment_name, artifact_location=self.record.artifact_location)
                reaped = reap(self.client)
                tags = {**self.record.tags, RUN_ID_TAG: self.record.record_id}
                self.run_id = self.client.create_run(experiment_id, run_name=self.run_name, tags=tags).info.run_id
        except Exception as err:  # mlflow raises many types for a bad store
            raise NeuligError(f"MLflow tracking store {self.tracking_uri!r} is unreachable ({first_line(err)}); "
                              "fix logger.tracking_uri or use logger=none") from err
        self.record.run_id = self.run_id
        if reaped:
            log.info(reaped_line(reaped))

    @contextmanager
    def store_lock(self):
        """An exclusive file lock beside a sqlite store (other stores handle concurrency themselves)."""
        if not self.tracking_uri.startswith("sqlite:///"):
            yield
            return
        import fcntl

        db = Path(self.tracking_uri[len("sqlite:///"):])
        db.parent.mkdir(parents=True, exist_ok=True)
        with open(db.with_name(db.name + ".lock"), "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def artifact_location(self) -> str | None:
        """Beside a sqlite store (``<dir>/mlartifacts/<experiment>``), so outputs/ holds everything;
        other stores keep their own default."""
        if not self.tracking_uri.startswith("sqlite:///"):
            return None
        root = Path(self.tracking_uri[len("sqlite:///"):]).resolve().parent / "mlartifacts" / self.experiment_name
        return root.as_uri()

    def call(self, what: str, function, *args, policy: http.HttpPolicy | None = None) -> None:
        """``function(*args)`` on the store, with the run's retry policy; once the store has failed (past
        its retries), nothing more is sent and the record is kept for later instead."""
        if self.run_id is None or self.lost is not None:
            return
        try:
            with http.policy(policy or self.policy):
                function(*args)
        except Exception as err:  # noqa: BLE001 - any store failure: keep the record, finish the run
            self.lost = f"{what}: {first_line(err)}"

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.run_id is None or trainer.global_rank != 0:
            return
        stage = getattr(pl_module, "stage_name", "train")
        history = getattr(pl_module, "history", None)
        if history is not None:  # modules that evaluate every k epochs keep their own curve points
            seen = self._offsets.get(stage, 0)
            for point in history[seen:]:
                self.log_curve({f"{stage}/{k}": float(v) for k, v in point.items() if k != "epoch" and v == v},
                               int(point["epoch"]))
            self._offsets[stage] = len(history)
            return
        metrics = {f"{stage}/{k}": float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        self.log_curve(metrics, trainer.current_epoch)

    def log_curve(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        if self.run_id is None or not metrics:
            return
        stamp = now_ms()
        points = [[k, float(v), stamp, int(step)] for k, v in metrics.items()]
        self.record.curves.extend(points)
        self.call("an epoch's curve", self.client.log_batch, self.run_id, [Metric(*p) for p in points])

    def finish(self, params: dict, metrics: dict[str, float], artifacts: list[Path], status: str = "FINISHED",
               root: Path | None = None) -> None:
        """Log params, metrics and ``artifacts`` (files under ``root`` keep their folder inside it), then end
        the run with ``status``."""
        self.record.params = flatten(params)
        self.record.metrics = {k: float(v) for k, v in metrics.items()}
        self.record.artifacts = [Path(p).relative_to(root).as_posix() if root is not None and Path(p).is_relative_to(root)
                                 else str(p) for p in artifacts]
        self.end(status, root=root)

    def report(self, config, result, files: dict[str, Path], run_dir: Path) -> None:
        """Log a finished run: one nested run per dataset combination when there are several (the parent
        holds the means), then the config as params, the contract metrics and the run's files."""
        import json
        from dataclasses import asdict

        from neulig.report import KINDS_TAG  # the tag's reader names it

        if result.labels:  # the report's rows for extra accuracies (neulig.report --granularities)
            self.record.tags[KINDS_TAG] = json.dumps(result.labels, sort_keys=True)
        if len(result.combos) > 1:
            self.record.children = [Child("+".join(c.datasets), flatten({"datasets": list(c.datasets)}),
                                          {k: float(v) for k, v in c.metrics.items()}) for c in result.combos]
        self.finish(asdict(config), result.metrics, list(files.values()), root=run_dir)

    def end(self, status: str, error: BaseException | None = None, root: Path | None = None) -> None:
        """End the run with ``status`` (FINISHED, FAILED, KILLED); for an error, its one line as a tag and its
        traceback as ``error.txt``. An interrupted run says its last word without retries. If the store is
        out of reach, the record goes to ``<run dir>/mlflow_record.json``, with one line saying so."""
        if self.run_id is None or self.record.status != "RUNNING":
            return
        self.record.status = status
        if error is not None:
            self.record.error = first_line(error, 500)
            self.record.traceback = "".join(traceback.format_exception(error))
        root = root if root is not None else self.run_dir
        self.call("the run's record", send, self.client, self.run_id, self.record, root,
                  policy=http.CHECK if status == "KILLED" else None)
        if self.lost is not None:
            self.keep(root)

    def keep(self, root: Path | None) -> None:
        """The store failed: write the record and say, in one line, how to send it."""
        if root is None:
            print(f"neulig: warning: MLflow store {self.tracking_uri} stopped answering ({self.lost}); "
                  "this run's record is lost", file=sys.stderr)
            return
        path = self.record.write(root)
        print(f"neulig: warning: MLflow store {self.tracking_uri} stopped answering ({self.lost}); the run's record "
              f"is kept in {path}; send it with: python -m neulig.report --upload {Path(root).resolve()}",
              file=sys.stderr)

    def fail(self, error: BaseException | None = None) -> None:
        self.end("FAILED", error)


__all__ = ["ERROR_TAG", "RECORD_FILE", "MLflowReporter", "flatten"]
