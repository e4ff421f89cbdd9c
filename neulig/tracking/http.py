"""MLflow's HTTP settings, in one place and scoped to the calls that need them.

MLflow's REST client reads its retry policy from environment variables at each request
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, ``..._BACKOFF_FACTOR``, ``..._BACKOFF_JITTER``, ``..._TIMEOUT``).
neulig sets them only inside :func:`policy`, around its own calls, and restores the previous values after:
nothing is left in the process for a later sweep job or for the user's code. Values the user exported
beforehand are overridden inside the block only.

- ``CHECK``: the start-up check of a run (an unreachable store is a one-line error in seconds) and the last
  word of an interrupted run (Slurm gives a preempted job seconds, not minutes).
- a run's own policy (:func:`run_policy`, from ``logger.http_retries`` / ``logger.http_timeout_s``):
  retries with exponential backoff (urllib3 sleeps 0, 2, 4, 8, ... s between attempts), enough to carry
  a run across a restart of the server; after that the run goes on without the store and keeps its
  record locally (``neulig.tracking.record``).
- ``REPORT``: reading a store (``python -m neulig.report``) and uploading a kept record.

Local stores (sqlite, folders) ignore these settings. Inside the block MLflow also prints no "View run"
link (neulig's summary names the run and the command that shows it), and urllib3 logs no line per retry.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from neulig.utils.scoped import environ


@dataclass(frozen=True)
class HttpPolicy:
    retries: int  # attempts after the first one (MLflow allows at most 10)
    timeout_s: float  # per attempt
    backoff_s: int = 1  # urllib3's backoff factor (MLflow takes whole seconds): sleeps 0, 2b, 4b, ... between attempts

    def variables(self) -> dict[str, str]:
        return {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(self.retries),
                "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(int(self.backoff_s)),
                "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(max(1, round(self.timeout_s)))),
                # neulig's summary names the run and the command that shows it; MLflow's own link is noise
                "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


CHECK = HttpPolicy(retries=0, timeout_s=5)
REPORT = HttpPolicy(retries=2, timeout_s=30)


def run_policy(logger) -> HttpPolicy:
    """The policy of a run's calls after the start-up check (``logger`` is the run's LoggerConfig)."""
    return HttpPolicy(retries=logger.http_retries, timeout_s=logger.http_timeout_s)


@contextmanager
def policy(chosen: HttpPolicy) -> Iterator[None]:
    """MLflow's HTTP requests inside the block follow ``chosen``; the environment is restored after. urllib3's
    line per retry is kept off stderr meanwhile (a store that stays away is reported once, by the caller)."""
    import logging

    retries_log = logging.getLogger("urllib3.connectionpool")
    level = retries_log.level
    retries_log.setLevel(logging.ERROR)
    try:
        with environ(**chosen.variables()):
            yield
    finally:
        retries_log.setLevel(level)
