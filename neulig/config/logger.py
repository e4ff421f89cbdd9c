"""Schema of ``conf/logger/``: where runs are recorded (MLflow), or nowhere."""
from dataclasses import dataclass
from typing import Optional

from omegaconf import MISSING

from neulig.config.fields import ConfigError, option, positive


@dataclass
class LoggerConfig:
    enabled: bool = MISSING
    tracking_uri: Optional[str] = None  # one store for every run, e.g. sqlite:///outputs/mlflow.db
    experiment_name: Optional[str] = None
    # a remote server (http://...): retries of each request, with backoff doubling from 1 s (6 retries: about
    # a minute, enough for a server restart); then the run goes on and keeps its record in the run dir
    http_retries: int = option(6, low=0, high=10)
    http_timeout_s: float = positive(30.0)  # per attempt

    def check(self, prefix: str) -> None:
        if self.enabled:
            for key in ("tracking_uri", "experiment_name"):
                if not getattr(self, key):
                    raise ConfigError(f"{prefix}{key}", getattr(self, key), "required when logging is enabled")
