"""neulig's sweeper: Hydra's basic sweeper, except that a job whose options are wrong fails alone.

Hydra composes every job of a sweep before launching any, and one job whose override has the wrong
type stops the whole sweep. This sweeper composes and checks each job's config (types while Hydra
composes, values with ``neulig.config.load``) first; a wrong job prints one line
``neulig: error in job <n>: <option>=<value>: <what is allowed>`` and is skipped, the others run
with their job numbers unchanged. Selected in conf/config.yaml (``override hydra/sweeper: neulig``).
"""

import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict


@dataclass
class NeuligSweeperConf:
    _target_: str = "hydra_plugins.neulig_sweeper.neulig_sweeper.NeuligSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[Dict[str, str]] = field(default_factory=dict)


ConfigStore.instance().store(group="hydra/sweeper", name="neulig", node=NeuligSweeperConf, provider="neulig")


class NeuligSweeper(BasicSweeper):
    def job_error(self, overrides: Sequence[str]) -> str | None:
        """The one-line error of a job's config, or None when it composes and checks."""
        from neulig.config import load
        from neulig.config.errors import translate

        try:
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(cfg):
                del cfg["hydra"]
            load(cfg)
        except Exception as err:  # noqa: BLE001 - every composition or check error becomes one line
            return str(translate(err, overrides))
        return None

    def sweep(self, arguments: List[str]) -> Any:
        params_conf = [f"{k}={v}" for k, v in (self.params or {}).items()] + list(arguments)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        self.overrides = self.split_arguments(parser.parse_overrides(params_conf), self.max_batch_size)
        sweep_dir = self.config.hydra.sweep.dir
        from pathlib import Path

        Path(sweep_dir).mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, Path(sweep_dir) / "multirun.yaml")
        returns, first = [], 0
        while not self.is_done():
            batch = self.get_job_batch()
            runnable: list[tuple[int, Sequence[str]]] = []
            for offset, overrides in enumerate(batch):
                error = self.job_error(overrides)
                if error is None:
                    runnable.append((first + offset, overrides))
                else:
                    print(f"neulig: error in job {first + offset}: {error}", file=sys.stderr)
            for start, jobs in contiguous(runnable):  # job numbers stay those of the full sweep
                results = self.launcher.launch(jobs, initial_job_idx=start)
                for result in results:
                    _ = result.return_value  # re-raises a job's exception, as the basic sweeper does
                returns.append(results)
            first += len(batch)
        return returns


def contiguous(jobs: list[tuple[int, Sequence[str]]]) -> list[tuple[int, list[Sequence[str]]]]:
    """Runs of consecutive job numbers: [(first number, [overrides, ...]), ...]."""
    runs: list[tuple[int, list[Sequence[str]]]] = []
    for number, overrides in jobs:
        if runs and runs[-1][0] + len(runs[-1][1]) == number:
            runs[-1][1].append(overrides)
        else:
            runs.append((number, [overrides]))
    return runs
