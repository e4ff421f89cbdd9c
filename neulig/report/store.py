"""Reading the MLflow store: open it, pick experiments, search runs, turn each into a typed :class:`RunRecord`.

What a run is (method, backbone, data, datasets, seed, options) is read from its tags
(:mod:`neulig.report.tags`), with its params as the fallback for runs recorded before the tags existed;
never from its run name or its experiment's name. mlflow is imported inside the functions that need it.
"""
from __future__ import annotations

import ast
import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from neulig.errors import first_line
from neulig.report.tags import KINDS_TAG, SEED, options_of

UNKNOWN = "?"


class ReportError(Exception):
    """A user-facing problem, printed as one line."""


@dataclass(frozen=True)
class RunRecord:
    """One finished (or, with --all-statuses, any) top-level run of ``python -m neulig.run``."""

    run_id: str
    run_name: str
    experiment: str               # the MLflow experiment (one study) it belongs to
    status: str
    start_time: int               # ms since the epoch
    method: str                   # merge.name
    model: str                    # model.name (the backbone)
    data: str                     # data.name
    datasets: tuple[str, ...]
    options: Mapping[str, str]    # every option that can change its numbers, seed included (tags.options_of)
    metrics: Mapping[str, float]
    kinds: Mapping[str, str]      # extra accuracies (Portland's granularities): kind -> row label

    @property
    def seed(self) -> str:
        return self.options.get(SEED, UNKNOWN)

    @property
    def started(self) -> str:
        return dt.datetime.fromtimestamp(self.start_time / 1000).strftime("%Y-%m-%d %H:%M:%S")



def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


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


def datasets_of(tags: Mapping[str, str], params: Mapping[str, str], metrics: Mapping[str, float]) -> tuple[str, ...]:
    """The tag ``datasets``; else the param ``data.datasets``; else the datasets the metrics name."""
    if tags.get("datasets"):
        return tuple(d for d in tags["datasets"].split(",") if d)
    raw = params.get("data.datasets")
    if raw:
        try:
            value = ast.literal_eval(raw)  # a literal, never code
            if isinstance(value, (list, tuple)) and value:
                return tuple(str(d) for d in value)
        except (ValueError, SyntaxError):
            pass
    return tuple(sorted(k.split("/", 2)[2] for k in metrics if k.startswith("acc/merged/") and k != "acc/merged/avg"))


def kinds_of(tags: Mapping[str, str]) -> dict[str, str]:
    """The run's extra accuracy kinds and their labels, as its tag records them."""
    try:
        kinds = json.loads(tags.get(KINDS_TAG, "{}"))
    except json.JSONDecodeError:
        return {}
    return {str(k): str(v) for k, v in kinds.items()} if isinstance(kinds, dict) else {}


def to_record(mlflow_run, experiment: str) -> RunRecord:
    info, data = mlflow_run.info, mlflow_run.data
    tags, params = data.tags, data.params
    options = options_of(tags, params)
    return RunRecord(run_id=info.run_id, run_name=info.run_name or tags.get("mlflow.runName", info.run_id),
                     experiment=experiment, status=info.status, start_time=int(info.start_time or 0),
                     method=tags.get("merge") or options.get("merge.name", UNKNOWN),
                     model=tags.get("backbone") or options.get("model.name", UNKNOWN),
                     data=options.get("data.name", UNKNOWN), datasets=datasets_of(tags, params, data.metrics),
                     options=options, metrics=dict(data.metrics), kinds=kinds_of(tags))


def load_runs(client, experiments: dict[str, str], user_filter: str | None, all_statuses: bool) -> list[RunRecord]:
    """The top-level runs with an ``acc/merged/avg`` (nested per-combination runs are left out: their
    parent holds the means), newest first."""
    from mlflow.exceptions import MlflowException

    status = "" if all_statuses else "attributes.status = 'FINISHED'"
    filter_string = " and ".join(f for f in ((user_filter or "").strip(), status) if f)
    runs: list[RunRecord] = []
    ids = list(experiments)
    try:
        for i in range(0, len(ids), 100):  # search_runs takes at most 100 experiment ids per call
            token = None
            while True:
                page = client.search_runs(ids[i:i + 100], filter_string=filter_string, max_results=1000,
                                          order_by=["attributes.start_time DESC"], page_token=token)
                runs.extend(to_record(r, experiments[r.info.experiment_id]) for r in page
                            if "mlflow.parentRunId" not in r.data.tags)
                token = page.token
                if not token:
                    break
    except MlflowException as err:
        if user_filter:
            raise ReportError(f"invalid --filter {user_filter!r} ({first_line(err)})") from err
        raise ReportError(f"cannot search runs ({first_line(err)})") from err
    return [r for r in runs if "acc/merged/avg" in r.metrics]
