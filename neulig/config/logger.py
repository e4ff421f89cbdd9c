"""Schema of ``conf/logger/``: where runs are recorded (MLflow), or nowhere."""
from dataclasses import dataclass
from typing import Optional

from omegaconf import MISSING

from neulig.config.fields import ConfigError


@dataclass
class LoggerConfig:
    enabled: bool = MISSING
    tracking_uri: Optional[str] = None  # one store for every run, e.g. sqlite:///outputs/mlflow.db
    experiment_name: Optional[str] = None

    def check(self, prefix: str) -> None:
        if self.enabled:
            for key in ("tracking_uri", "experiment_name"):
                if not getattr(self, key):
                    raise ConfigError(f"{prefix}{key}", getattr(self, key), "required when logging is enabled")
