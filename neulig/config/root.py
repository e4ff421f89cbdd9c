"""Schema of ``conf/config.yaml``: the groups of one experiment and the options outside any group."""
import re
from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING

from neulig.config.align import AlignConfig
from neulig.config.data import DataConfig
from neulig.config.fields import ConfigError, option, positive
from neulig.config.logger import LoggerConfig
from neulig.config.merge import LEVELS, MergeConfig
from neulig.config.model import ModelConfig
from neulig.config.paths import PathsConfig
from neulig.config.trainer import TrainerConfig

OBJECTIVE = re.compile(r"^(acc/[a-z_]+|gap)/[a-z0-9_]+$")


@dataclass
class EnsembleConfig:
    level: str = option(MISSING, choices=LEVELS)  # features: h(sum_t c_t z_t) as the paper's code; logits: sum_t c_t h(z_t)


@dataclass
class EvalConfig:
    """How evaluations run: the one speed-only batch size (feature extraction, fine-tune validation, merged
    and ensembled evaluations); it never changes a result (``merge.merged_batch_size`` does: Portland's)."""

    batch_size: int = positive()


@dataclass
class Config:
    """One experiment: one backbone (model) x one dataset combination (data) x one method (merge)."""

    paths: PathsConfig = MISSING
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    merge: MergeConfig = MISSING
    align: AlignConfig = MISSING
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = MISSING
    seed: int = MISSING
    objective: str = MISSING  # the metric returned to Hydra sweepers, e.g. acc/merged/avg
    ensemble: EnsembleConfig = MISSING
    eval: EvalConfig = MISSING
    save_merged: bool = MISSING  # write the merged models as checkpoints into the run dir
    save_format: str = option(MISSING, choices=("open_clip", "hf"))  # safetensors files, or Hugging Face folders
    feature_dtype: str = option(MISSING, choices=("float32", "float16"))  # cached expert features, held once
    progress: str = option(MISSING, choices=("auto", "on", "off"))  # progress bars on stderr
    threads: Any = MISSING  # torch threads: auto (this run's share of the cores, neulig/utils/cores.py) or a count

    def check(self, prefix: str) -> None:
        if self.threads != "auto" and (type(self.threads) is not int or self.threads < 1):
            raise ConfigError("threads", self.threads, "auto (a share of the cores by the runs computing on this "
                              "machine) or an integer >= 1")
        if not OBJECTIVE.match(self.objective):
            raise ConfigError("objective", self.objective, "a metric key such as acc/merged/avg or gap/avg")
        for name in self.model.experts or {}:
            if name.lower() not in self.data.names:
                raise ConfigError(f"model.experts.{name}", self.model.experts[name],
                                  f"a dataset of data.datasets ({', '.join(self.data.names)})")

    @property
    def run_name(self) -> str:
        """``<merge>-<data>-<model>-s<seed>``, plus ``-k<k>`` when every k-combination is run and
        ``-<method>`` when the experts are aligned (``align=``)."""
        k = self.data.num_co_models
        suffix = f"-k{k}" if k is not None and k != len(self.data.datasets) else ""
        suffix += f"-{self.align.method}" if self.align.method else ""
        return f"{self.merge.name}-{self.data.name}-{self.model.name}-s{self.seed}{suffix}"
