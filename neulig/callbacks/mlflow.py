"""MLflowReporter: a Lightning callback that records one neulig run in MLflow.

It is attached to every Trainer of the run (fine-tuning, Portland) and logs their epoch curves, then
``finish()`` logs the contract metrics of docs/design.md ("Metric contract"), the flattened config as params, tags, and the
run's files as artifacts. The store is checked before any training (``open``), so an unreachable
tracking URI fails in seconds with one line.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import lightning as L

from neulig.errors import NeuligError


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = str(value)[:6000]
    return out


def artifact_folder(path: Path, root: Path | None) -> str | None:
    """The artifact folder of ``path``: its parent relative to ``root``, or None (the top level)."""
    if root is None or not path.parent.is_relative_to(root) or path.parent == root:
        return None
    return path.parent.relative_to(root).as_posix()


class MLflowReporter(L.Callback):
    def __init__(self, tracking_uri: str, experiment_name: str, run_name: str, tags: dict[str, str] | None = None):
        self.tracking_uri, self.experiment_name, self.run_name = tracking_uri, experiment_name, run_name
        self.tags = tags or {}
        self.client = None
        self.run_id: str | None = None
        self._offsets: dict[str, int] = {}

    def open(self) -> None:
        """Connect, create the experiment and the run; one clear line if the store is unreachable."""
        import logging
        import os

        import mlflow
        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # schema-creation INFO lines are not news
        logging.getLogger("alembic").setLevel(logging.WARNING)
        # an unreachable server must fail in seconds, not after minutes of retries
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
        try:
            with self.store_lock():  # parallel sweep jobs must not race on schema creation or experiments
                mlflow.set_tracking_uri(self.tracking_uri)
                self.client = MlflowClient(self.tracking_uri)
                experiment = self.client.get_experiment_by_name(self.experiment_name)
                experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(
                    self.experiment_name, artifact_location=self.artifact_location())
                self.run_id = self.client.create_run(experiment_id, run_name=self.run_name, tags=self.tags).info.run_id
        except Exception as err:  # mlflow raises many types for a bad store
            raise NeuligError(f"MLflow tracking store {self.tracking_uri!r} is unreachable ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:200]}); fix logger.tracking_uri or use logger=none") from err

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
        import time

        from mlflow.entities import Metric

        if self.run_id is None or not metrics:
            return
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def finish(self, params: dict, metrics: dict[str, float], artifacts: list[Path], status: str = "FINISHED",
               root: Path | None = None) -> None:
        """Log params, metrics and ``artifacts`` (files under ``root`` keep their folder inside it), then close."""
        import time

        from mlflow.entities import Metric, Param

        if self.run_id is None:
            return
        now = int(time.time() * 1000)
        items = list(flatten(params).items())
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in items[i : i + 100]])
        pairs = list(metrics.items())
        for i in range(0, len(pairs), 500):
            self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in pairs[i : i + 500]])
        for path in artifacts:
            if Path(path).is_dir():  # a Hugging Face folder (save_format=hf) keeps its name as a folder
                folder = artifact_folder(Path(path) / "_", root)
                self.client.log_artifacts(self.run_id, str(path), folder)
            else:
                self.client.log_artifact(self.run_id, str(path), artifact_folder(Path(path), root))
        self.client.set_terminated(self.run_id, status)

    def report(self, config, result, files: dict[str, Path], run_dir: Path) -> None:
        """Log a finished run: one nested run per dataset combination when there are several (the parent
        holds the means), then the config as params, the contract metrics and the run's files."""
        import json
        from dataclasses import asdict

        from neulig.report import KINDS_TAG  # the tag's reader names it

        if result.labels:  # the report's rows for extra accuracies (neulig.report --granularities)
            self.client.set_tag(self.run_id, KINDS_TAG, json.dumps(result.labels, sort_keys=True))
        if len(result.combos) > 1:
            for combo in result.combos:
                self.log_child("+".join(combo.datasets), {"datasets": list(combo.datasets)}, combo.metrics)
        self.finish(asdict(config), result.metrics, list(files.values()), root=run_dir)

    def log_child(self, name: str, params: dict, metrics: dict[str, float]) -> None:
        """A nested run (one dataset combination) under this run, with its own contract metrics."""
        import time

        from mlflow.entities import Metric, Param

        if self.run_id is None:
            return
        parent = self.client.get_run(self.run_id)
        tags = {**self.tags, "mlflow.parentRunId": self.run_id}
        child = self.client.create_run(parent.info.experiment_id, run_name=f"{self.run_name}/{name}", tags=tags).info.run_id
        now = int(time.time() * 1000)
        self.client.log_batch(child, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                              params=[Param(k, v) for k, v in flatten(params).items()])
        self.client.set_terminated(child, "FINISHED")

    def fail(self) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, "FAILED")
