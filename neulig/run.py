"""``python -m neulig.run``: one experiment (backbone x datasets x merge method), Hydra-configured.

    python -m neulig.run                                   # embedded default: tiny backbone, Portland
    python -m neulig.run model=vit_b32 merge=portland      # real CLIP (weights in paths.weights_dir)
    python -m neulig.run -m 'merge=glob(*)'                # every method; experts are trained once

Config errors and missing files are answered with one line and exit code 2, before heavy imports.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ("model", "data", "merge", "trainer", "logger", "experiment", "hparams_search")


def fail(message: str) -> "NoReturn":  # noqa: F821
    print(f"neulig: error: {message}", file=sys.stderr)
    sys.exit(2)


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def check_overrides(argv: list[str]) -> None:
    """Reject an unknown group option (``merge=nosuch``) in one line, listing the available ones."""
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, _, value = arg.lstrip("+~").partition("=")
        if key not in GROUPS or value.startswith(("glob(", "choice(", "range(")) or value in ("null", ""):
            continue
        options = group_options(key)
        for option in value.split(","):
            if option not in options:
                fail(f"unknown {key} {option!r}; available: {', '.join(options)}")


def preflight(cfg: dict) -> None:
    """Cheap checks that must fail before any import of torch or any training."""
    from neulig.models.weights import missing_weights_message, weights_file

    model = cfg["model"]
    tag = model.get("pretrained")
    if tag not in (None, "neulig"):
        for origin in model.get("origins") or [tag]:
            if weights_file(cfg["paths"]["weights_dir"], model["arch"], origin) is None:
                fail(missing_weights_message(model["name"], cfg["paths"]["weights_dir"], model["arch"], origin))
    k, n = cfg["data"].get("num_co_models"), len(cfg["data"]["datasets"])
    if k is not None and not 2 <= int(k) <= n:
        fail(f"data.num_co_models={k} is out of range: choose 2..{n} for the {n} datasets of data={cfg['data']['name']}")
    data = cfg["data"]
    from neulig.data.registry import empty_split_message
    from neulig.models.experts import preflight_message

    message = empty_split_message(data.get("sizes")) or preflight_message(model.get("experts"), data["datasets"])
    if message:
        fail(message)
    if not data.get("download", False):
        from neulig.data.real import REAL_SPECS, missing_message

        root = Path(data.get("root") or cfg["paths"]["data_dir"])
        for name in data["datasets"]:
            if name.lower() in REAL_SPECS and not (root / name.lower()).is_dir():
                fail(missing_message(name.lower(), root / name.lower(), False))
    if cfg["merge"].get("kind") not in ("static", "trained", "ensemble"):
        fail(f"merge.kind must be static, trained or ensemble, got {cfg['merge'].get('kind')!r}")
    from neulig.errors import NeuligError
    from neulig.utils.progress import progress_mode

    try:
        progress_mode(cfg.get("progress", "auto"))
    except NeuligError as err:
        fail(str(err))


def run_name(cfg: dict) -> str:
    """``<merge>-<data>-<model>-s<seed>``, plus ``-k<k>`` when every k-combination is run."""
    k = cfg["data"].get("num_co_models")
    suffix = f"-k{k}" if k is not None and int(k) != len(cfg["data"]["datasets"]) else ""
    return f"{cfg['merge']['name']}-{cfg['data']['name']}-{cfg['model']['name']}-s{cfg['seed']}{suffix}"


def execute(cfg: dict, config_yaml: str, run_dir: Path) -> dict:
    """Run the recipe with MLflow reporting and write the run's files; returns the results dict."""
    from neulig import __version__
    from neulig.pipeline import run_experiment
    from neulig.results import table2, write_run_files

    from neulig.utils.log import is_rank_zero

    reporter = None
    if not is_rank_zero():  # a DDP child re-runs the recipe for its share of training; rank 0 reports
        from neulig.pipeline import run_experiment as run_child

        run_child(cfg)
        return {}
    if cfg["logger"].get("enabled", False):
        from neulig.callbacks.mlflow import MLflowReporter

        tags = {"neulig.version": __version__, "git.commit": git_commit(), "backbone": cfg["model"]["name"],
                "datasets": ",".join(cfg["data"]["datasets"]), "merge": cfg["merge"]["name"],
                "merge.kind": cfg["merge"]["kind"]}
        reporter = MLflowReporter(cfg["logger"]["tracking_uri"], cfg["logger"]["experiment_name"], run_name(cfg), tags)
        reporter.open()
    from neulig.callbacks.progress import progress_callbacks

    try:
        results = run_experiment(cfg, callbacks=[*([reporter] if reporter else []),
                                                 *progress_callbacks(cfg.get("progress", "auto"))])
    except BaseException:
        if reporter:
            reporter.fail()
        raise
    metrics = results["metrics"]
    table = table2(metrics, results["names"], cfg["merge"]["name"])
    record = {"run_name": run_name(cfg), "metrics": metrics, "timings": results["timings"],
              "granularity": {"acc/merged": "per test batch (paper protocol)" if cfg["merge"]["name"] == "portland"
                              else "one static merged encoder"},
              "combos": [{"datasets": c["datasets"], "history": c["history"],
                          "result": c["result"]} for c in results["combos"]]}
    files = write_run_files(run_dir, config_yaml, record, table)
    from neulig.plots import run_scatter  # this run's (merged avg, ensembled avg) point, as the paper's Fig. 3
    files["scatter.png"] = run_scatter(run_dir, cfg["merge"]["name"], metrics, title=run_name(cfg))
    if cfg.get("save_merged"):  # open_clip checkpoints: the backbone's text tower + the merged image encoder
        from neulig.models.export import save_merged

        backbone = results["backbone"]
        written = save_merged(run_dir, results["combos"], backbone.clip, backbone.arch)
        if not written:
            from neulig.utils.log import log

            log.info(f"save_merged: merge={cfg['merge']['name']} defines no static merged weights; nothing written")
        files.update(written)
    if reporter:
        if len(results["combos"]) > 1:  # one nested run per combination, the parent holds the means
            from neulig.pipeline import contract_metrics

            for combo in results["combos"]:
                child = {k: v for k, v in combo["result"].items() if isinstance(v, dict) and k.startswith(("merged", "ensembled"))}
                reporter.log_child("+".join(combo["datasets"]), {"datasets": combo["datasets"]}, contract_metrics(child))
        reporter.finish(cfg, metrics, list(files.values()), root=run_dir)
    print(f"\n{run_name(cfg)}  (accuracy %, gap = |Ens. - Mer.|)\n{table}\n")
    print("\n".join(summary_lines(run_name(cfg), run_dir, list(files), cfg["logger"])))
    return record


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


def summary_lines(name: str, run_dir: Path, files: list[str], logger_cfg: dict) -> list[str]:
    """The closing lines of a run: its name, its directory and files, and where MLflow holds it."""
    lines = [f"run:     {name}", f"files:   {run_dir.resolve()}/  ({file_list(files)})"]
    if logger_cfg.get("enabled", False):
        lines.append(f"MLflow:  experiment {logger_cfg['experiment_name']!r} in {logger_cfg['tracking_uri']}")
        lines.append(f"view:    {ui_command(logger_cfg['tracking_uri'])}")
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


def main() -> None:
    check_overrides(sys.argv[1:])
    import hydra
    from omegaconf import OmegaConf

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
    def app(dcfg) -> float | None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        from neulig.errors import NeuligError

        cfg = OmegaConf.to_container(dcfg, resolve=True)
        hydra_cfg = HydraConfig.get()
        multirun = hydra_cfg.mode == RunMode.MULTIRUN
        # a Lightning DDP child re-executes this command: make it reuse rank 0's run dir
        os.environ.setdefault("NEULIG_RUN_DIR", hydra_cfg.runtime.output_dir)
        try:
            preflight(cfg)
            record = execute(cfg, OmegaConf.to_yaml(dcfg), Path(hydra_cfg.runtime.output_dir))
        except NeuligError as err:
            if multirun:  # one failed job must not stop the sweep
                print(f"neulig: error in job {hydra_cfg.job.num}: {err}", file=sys.stderr)
                return float("nan")
            fail(str(err))
        except Exception as err:  # noqa: BLE001 - a bug in one sweep job: keep the others going
            if not multirun:
                raise
            import traceback

            trace = Path(hydra_cfg.runtime.output_dir) / "error.txt"
            trace.parent.mkdir(parents=True, exist_ok=True)
            trace.write_text(traceback.format_exc())
            print(f"neulig: job {hydra_cfg.job.num} failed ({type(err).__name__}: {err}); traceback in {trace}",
                  file=sys.stderr)
            return float("nan")
        return record.get("metrics", {}).get(cfg.get("objective", "acc/merged/avg"))

    app()


if __name__ == "__main__":
    main()
