"""``python -m neulig.run``: one experiment (backbone x datasets x merge method), Hydra-configured.

    python -m neulig.run                                   # embedded default: tiny backbone, Portland
    python -m neulig.run model=vit_b32 merge=portland      # real CLIP (weights in paths.weights_dir)
    python -m neulig.run -m 'merge=glob(*)'                # every method; experts are trained once

compose -> check -> execute -> summary. Every option is declared in ``neulig.config``; a wrong one is
answered with one line ``neulig: error: <option>=<value>: <what is allowed>`` and exit code 2 before
any heavy import, cache write or MLflow run (in a sweep, that job alone is skipped).
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

from neulig.config import CONF_DIR

HYDRA_FLAGS = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--version", "--shell-completion", "-sc")


def fail(message: str) -> NoReturn:
    print(f"neulig: error: {message}", file=sys.stderr)
    sys.exit(2)


def check_command_line(argv: list[str]) -> None:
    """Compose and check the config of a single run before Hydra starts it (a sweep checks each job),
    reading the command line as Hydra does (``-cn/--config-name``, ``-cp/--config-path``, ``-cd/--config-dir``)."""
    if any(a in HYDRA_FLAGS or a.startswith(tuple(f"{f}=" for f in HYDRA_FLAGS)) for a in argv):
        return
    from hydra._internal.utils import get_args_parser

    args, unknown = get_args_parser().parse_known_args(argv)  # a malformed flag: argparse's usage, as Hydra's
    if unknown:
        fail(f"{unknown[0]}: an override after a flag; Hydra reads the flags first: -cn NAME key=value ...")
    if args.multirun:
        return
    from neulig.config import compose, load
    from neulig.config.errors import translate

    try:
        where = config_source(args.config_name, args.config_path, args.config_dir)
        load(compose(args.overrides, **where))
    except Exception as err:  # noqa: BLE001 - every composition or check error is one line
        fail(str(translate(err, args.overrides)))


def config_source(name: str | None, path: str | None, extra: str | None) -> dict:
    """``compose``'s config name and folders from Hydra's flags; a missing one is a ConfigError. A relative
    ``--config-path`` is relative to this file's folder, as Hydra resolves it for ``hydra.main``."""
    from neulig.config import ConfigError

    folder = CONF_DIR if path is None else (Path(__file__).parent / path).resolve()
    for flag, given in (("--config-path", folder), ("--config-dir", extra)):
        if given is not None and not Path(given).expanduser().is_dir():
            raise ConfigError(flag, given, "an existing folder of configs")
    name = name or "config"
    folders = [Path(extra).expanduser()] if extra else []
    if not any((f / f"{name.removesuffix('.yaml')}.yaml").is_file() for f in [*folders, folder]):
        found = sorted({p.stem for f in [*folders, folder] for p in f.glob("*.yaml")})
        raise ConfigError("--config-name", name, f"a config of {', '.join(map(str, [*folders, folder]))}: "
                          f"{', '.join(found) or 'none there'}")
    return {"config_name": name, "config_dir": folder, "extra_dir": Path(extra).expanduser() if extra else None}


def preflight(config) -> None:
    """Everything the run needs that is absent and cannot be fetched (weights, experts, base, datasets),
    named before anything is fetched or computed: one ``neulig: error:`` line each. Then the run's first
    lines: its device and precision (and a warning for a real backbone on the CPU)."""
    from neulig.data.preflight import missing_datasets
    from neulig.errors import NeuligError
    from neulig.models.preflight import missing_model_files
    from neulig.utils.device import device_lines
    from neulig.utils.log import is_rank_zero, log

    lines = missing_model_files(config.model, config.paths.weights_dir, config.data.names)
    lines += missing_datasets(config.data)
    if lines:  # fail() prefixes the first line; every further one gets the same prefix here
        raise NeuligError("\nneulig: error: ".join(lines))
    for line in device_lines(config) if is_rank_zero() else ():  # a DDP child's device is rank 0's news
        (log.warning if line.startswith("warning:") else log.info)(line)


def execute(config, config_yaml: str, run_dir: Path) -> dict:
    """Run the recipe, write the run's files, record it in MLflow; returns the results.json record.

    Once the MLflow run is open, every way out ends it: FINISHED, FAILED (an error, during the experiment or
    after it: the table, the files, the report) or KILLED (SIGINT, SIGTERM; see neulig.utils.signals)."""
    from neulig.recipe import run_experiment
    from neulig.utils.log import is_rank_zero

    if not is_rank_zero():  # a DDP child re-runs the recipe for its share of training; rank 0 reports
        run_experiment(config)
        return {}
    reporter = open_reporter(config, run_dir)
    with ends_run(reporter):
        result = run_experiment(config, callbacks=callbacks(config, reporter))
        record, text = result.record(config.run_name), table(config, result)
        files = write_outputs(config, config_yaml, run_dir, result, record, text)
        if reporter:
            reporter.report(config, result, files, run_dir)
    print(f"\n{config.run_name}  (accuracy %, gap = |Ens. - Mer.|)\n{text}\n")
    print("\n".join(summary_lines(config.run_name, run_dir, list(files), config.logger)))
    return record


@contextmanager
def ends_run(reporter):
    """End ``reporter``'s MLflow run on any way out of the block: KILLED for an interruption (also one that
    a library turned into another exception), FAILED with the error otherwise."""
    from neulig.utils.signals import Interrupted, received

    try:
        yield
    except BaseException as err:
        if reporter:
            interrupted = isinstance(err, (Interrupted, KeyboardInterrupt)) or received() is not None
            reporter.end("KILLED" if interrupted else "FAILED", err)
        raise


def open_reporter(config, run_dir: Path | None = None):
    """The run's MLflow reporter (None with logger=none); an unreachable store fails in seconds."""
    if not config.logger.enabled:
        return None
    from neulig import __version__
    from neulig.callbacks.mlflow import MLflowReporter
    from neulig.report.tags import run_tags
    from neulig.tracking.http import run_policy

    tags = {"neulig.version": __version__, "git.commit": git_commit(), **run_tags(config)}
    reporter = MLflowReporter(config.logger.tracking_uri, config.logger.experiment_name, config.run_name, tags,
                              run_dir, run_policy(config.logger))
    reporter.open()
    return reporter


def callbacks(config, reporter) -> tuple:
    from neulig.callbacks.progress import progress_callbacks

    return (*([reporter] if reporter else []), *progress_callbacks(config.progress))


def table(config, result) -> str:
    from neulig.results import table2

    return table2(result.metrics, result.names, config.merge.name, result.labels)


def write_outputs(config, config_yaml: str, run_dir: Path, result, record: dict, text: str) -> dict[str, Path]:
    """results.json / results.md (``text``, the printed table) / config.yaml, the run's scatter point, and
    the merged models if asked."""
    from neulig.plots import curve_png, run_scatter
    from neulig.results import write_run_files

    files = write_run_files(run_dir, config_yaml, record, text)
    files["scatter.png"] = run_scatter(run_dir, config.merge.name, result.metrics, title=config.run_name)
    histories = {"+".join(c.datasets): list(c.history) for c in result.combos}
    curve = curve_png(histories, run_dir / "curve.png", title=config.run_name)
    if curve is not None:
        files["curve.png"] = curve
    if config.save_merged:  # open_clip checkpoints: the backbone's text tower + each merged image encoder
        from neulig.models.export import save_merged

        written = save_merged(run_dir, result.combos, result.base.clip, result.base.arch, config.save_format)
        if not written:
            from neulig.utils.log import log

            log.info(f"save_merged: merge={config.merge.name} defines no merged weights; nothing written")
        files.update(written)
    return files


def ui_command(tracking_uri: str, cwd: Path | None = None) -> str:
    """The command that shows ``tracking_uri`` in the MLflow UI: ``make ui`` for the project's store
    (``make -C <repo> ui`` from elsewhere), ``mlflow ui`` on any other local store, the URL of a server."""
    repo = CONF_DIR.parent
    cwd = Path.cwd() if cwd is None else cwd
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri}"
    if tracking_uri.startswith("sqlite:///"):
        db = (cwd / tracking_uri[len("sqlite:///"):]).resolve()
        if db == (repo / "outputs" / "mlflow.db").resolve():
            return "make ui" if cwd.resolve() == repo.resolve() else f"make -C {repo} ui"
        return f"mlflow ui --backend-store-uri sqlite:///{db}"
    return f"mlflow ui --backend-store-uri {tracking_uri}"


def file_list(files: list[str]) -> str:
    """``a, b, merged_task/ (4 files)``: the top-level names, then each folder once with its count."""
    folders: dict[str, int] = {}
    for name in files:
        if "/" in name:
            folders[name.split("/")[0]] = folders.get(name.split("/")[0], 0) + 1
    return ", ".join([n for n in files if "/" not in n] + [f"{d}/ ({k} files)" for d, k in folders.items()])


def summary_lines(name: str, run_dir: Path, files: list[str], logger) -> list[str]:
    """The closing lines of a run: its name, its directory and files, and where MLflow holds it."""
    lines = [f"run:     {name}", f"files:   {run_dir.resolve()}/  ({file_list(files)})"]
    if logger.enabled:
        lines.append(f"MLflow:  experiment {logger.experiment_name!r} in {logger.tracking_uri}")
        lines.append(f"view:    {ui_command(logger.tracking_uri)}")
    else:
        lines.append("MLflow:  off (logger=none)")
    return lines


def git_commit() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=CONF_DIR.parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def job(dcfg) -> float | None:
    """One Hydra job: check the config, check what must exist, execute; a failure in a sweep is that job's."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from neulig.config import ConfigError, load
    from neulig.errors import NeuligError
    from neulig.utils.scoped import random_state

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        with isolated(run_dir):
            config = load(dcfg)
            preflight(config)
            with random_state():
                record = execute(config, OmegaConf.to_yaml(dcfg), run_dir)
    except (ConfigError, NeuligError) as err:
        if multirun:  # one failed job must not stop the sweep
            print(f"neulig: error in job {hydra_cfg.job.num}: {err}", file=sys.stderr)
            return float("nan")
        fail(str(err))
    except Exception as err:  # noqa: BLE001 - a bug in one sweep job: keep the others going
        if not multirun:
            raise
        import traceback

        trace = run_dir / "error.txt"
        trace.parent.mkdir(parents=True, exist_ok=True)
        trace.write_text(traceback.format_exc())
        print(f"neulig: job {hydra_cfg.job.num} failed ({type(err).__name__}: {err}); traceback in {trace}",
              file=sys.stderr)
        return float("nan")
    objective = record.get("metrics", {}).get(config.objective)
    if objective is None and record:  # which metrics a run has depends on its method: told after the run
        print(f"neulig: warning: objective={config.objective}: not a metric of this run (see its results.json)",
              file=sys.stderr)
    return objective


@contextmanager
def isolated(run_dir: Path):
    """One job's process state, undone when it ends, so the next job of a sweep in this process sees none
    of it: ``NEULIG_RUN_DIR`` (a Lightning DDP child, started during the job, reuses rank 0's run dir
    through it), warning filters, and SIGINT/SIGTERM raising ``Interrupted`` (neulig.utils.signals). The
    random generators are restored around the run itself (``utils.scoped.random_state``), once the config
    is known to be good (it imports torch)."""
    import warnings

    from neulig.utils.scoped import environ
    from neulig.utils.signals import interruptible

    with environ(NEULIG_RUN_DIR=str(run_dir)), warnings.catch_warnings(), interruptible():
        yield


def main() -> None:
    from neulig.config import register
    from neulig.utils.signals import Interrupted

    register()
    check_command_line(sys.argv[1:])
    import hydra

    try:
        hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(job)()
    except Interrupted as stop:  # Ctrl-C, or SIGTERM (Slurm's preemption): the MLflow run is already KILLED
        print(f"neulig: interrupted by {stop.name}; stopped", file=sys.stderr)
        sys.exit(stop.exit_code)


if __name__ == "__main__":
    main()
