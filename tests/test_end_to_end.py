"""The whole pipeline through the Hydra compose API on tiny settings; the contract reaches MLflow."""
import json
from pathlib import Path

from omegaconf import OmegaConf

from neulig.run import execute

CONTRACT = ["acc/merged/avg", "acc/ensembled/avg", "gap/avg", "acc/finetuned/avg", "acc/pretrained/avg"]


def _run(cfg, run_dir: Path) -> dict:
    return execute(OmegaConf.to_container(cfg, resolve=True), OmegaConf.to_yaml(cfg), run_dir)


def test_portland_then_average_reuses_experts_and_logs_contract(tiny_cfg, tmp_path):
    from mlflow.tracking import MlflowClient

    cfg = tiny_cfg("merge=portland")
    record = _run(cfg, tmp_path / "run1")
    names = cfg.data.datasets
    metrics = record["metrics"]
    for key in CONTRACT + [f"acc/{k}/{d}" for k in ("merged", "ensembled", "finetuned", "pretrained") for d in names]:
        assert key in metrics, key
    for kind in ("merged_batch", "merged_task", "merged_global"):
        assert f"acc/{kind}/avg" in metrics
    assert metrics["gap/avg"] == abs(metrics["acc/ensembled/avg"] - metrics["acc/merged/avg"])
    saved = json.loads((tmp_path / "run1" / "results.json").read_text())
    assert saved["metrics"] == metrics

    experts_dir = Path(cfg.paths.cache_dir) / "experts"
    before = {p.name: p.stat().st_mtime_ns for p in experts_dir.iterdir()}
    assert len(before) == len(names)
    _run(tiny_cfg("merge=average"), tmp_path / "run2")
    after = {p.name: p.stat().st_mtime_ns for p in experts_dir.iterdir()}
    assert after == before  # the second method trained nothing

    client = MlflowClient(cfg.logger.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.logger.experiment_name)
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["average-embedded-tiny-s0", "portland-embedded-tiny-s0"]
    for run in runs:
        assert run.info.status == "FINISHED"
        for key in CONTRACT + [f"gap/{d}" for d in names]:
            assert key in run.data.metrics, (run.info.run_name, key)
        assert run.data.params["merge.name"] in ("portland", "average")
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "results.json", "results.md"} <= artifacts
    portland = next(r for r in runs if r.info.run_name.startswith("portland"))
    assert len(client.get_metric_history(portland.info.run_id, "portland/val/ensembled_avg")) >= 2
