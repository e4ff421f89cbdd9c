"""The whole pipeline through the Hydra compose API on tiny settings; the contract reaches MLflow."""
import json
from pathlib import Path

from tests.conftest import execute

CONTRACT = ["acc/merged/avg", "acc/ensembled/avg", "gap/avg", "acc/finetuned/avg", "acc/pretrained/avg"]


def _run(cfg, run_dir: Path) -> dict:
    return execute(cfg, run_dir)


def test_portland_then_average_reuses_experts_and_logs_contract(tiny_cfg, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    cfg = tiny_cfg("merge=portland", "save_merged=true")
    record = _run(cfg, tmp_path / "run1")
    summary = capsys.readouterr().out
    assert "run:     portland-embedded-tiny-s0" in summary
    assert f"view:    mlflow ui --backend-store-uri sqlite:///{tmp_path.resolve()}/outputs/mlflow.db" in summary
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
    average = _run(tiny_cfg("merge=average", "save_merged=true"), tmp_path / "run2")
    after = {p.name: p.stat().st_mtime_ns for p in experts_dir.iterdir()}
    assert after == before  # the second method trained nothing
    check_saved_merges(cfg, tmp_path, saved, average)

    client = MlflowClient(cfg.logger.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.logger.experiment_name)
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["average-embedded-tiny-s0", "portland-embedded-tiny-s0"]
    for run in runs:
        assert run.info.status == "FINISHED"
        for key in CONTRACT + [f"gap/{d}" for d in names]:
            assert key in run.data.metrics, (run.info.run_name, key)
        assert run.data.params["merge.name"] in ("portland", "average")
        # open_reporter tags each option with its param's text (what neulig.report reads)
        assert run.data.tags["config.merge.name"] == run.data.params["merge.name"] and run.data.tags["config.seed"] == "0"
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "results.json", "results.md"} <= artifacts
        assert ("merged.safetensors" in artifacts) == run.info.run_name.startswith("average")
        if run.info.run_name.startswith("portland"):
            assert {"merged_global.safetensors", "merged_task"} <= artifacts
            assert {a.path for a in client.list_artifacts(run.info.run_id, "merged_task")} == \
                {f"merged_task/{d}.safetensors" for d in names}
    portland = next(r for r in runs if r.info.run_name.startswith("portland"))
    assert len(client.get_metric_history(portland.info.run_id, "portland/val/ensembled_avg")) >= 2


def check_saved_merges(cfg, tmp_path: Path, portland: dict, average: dict) -> None:
    """Every saved merge loads with open_clip and its image features are the merge's: Portland's from the
    experts and the betas in results.json, the average's from the experts; a user who builds zero-shot
    heads from the loaded model's own text tower gets the reported accuracy."""
    import torch

    from neulig.merging.average import merge as average_merge
    from neulig.merging.flat import FlatStack
    from neulig.models.checkpoints import load_state
    from tests.models.test_export import assert_open_clip_checkpoint

    cache = Path(cfg.paths.cache_dir)
    names = [d.lower() for d in cfg.data.datasets]
    by_name = {json.loads((e / "meta.json").read_text())["dataset"]: e for e in (cache / "experts").iterdir()}
    experts = [load_state(by_name[d] / "encoder.safetensors") for d in names]
    (backbone_file,) = (cache / "backbone").glob("*/model.safetensors")
    backbone = load_state(backbone_file)
    base = {k[len("visual."):]: v for k, v in backbone.items() if k.startswith("visual.")}

    result = portland["combos"][0]["result"]
    flat = FlatStack(experts)
    run1 = tmp_path / "run1"
    assert_open_clip_checkpoint(run1 / "merged_global.safetensors", flat.combine(torch.tensor(result["global_beta"])), backbone)
    for d in names:
        model = assert_open_clip_checkpoint(run1 / "merged_task" / f"{d}.safetensors",
                                            flat.combine(torch.tensor(result["task_beta"][d])), backbone)
        assert_reported_accuracy(model, cfg, d, portland["metrics"][f"acc/merged_task/{d}"])
    model = assert_open_clip_checkpoint(tmp_path / "run2" / "merged.safetensors", average_merge(base, experts), backbone)
    assert_reported_accuracy(model, cfg, names[0], average["metrics"][f"acc/merged/{names[0]}"])


def assert_reported_accuracy(model, cfg, name: str, reported: float) -> None:
    """Zero-shot accuracy of an open_clip ``model`` on ``name``'s test split, heads from its own text tower."""
    import open_clip
    import torch

    from neulig.data.registry import load_dataset
    from neulig.evaluate import feature_accuracy
    from neulig.models.heads import build_head_weight

    data = load_dataset(name, dict(cfg.data.sizes), cfg.model.image_size, 0,
                        data_dir=cfg.paths.data_dir, cache_dir=cfg.paths.cache_dir)
    with torch.no_grad():
        head = build_head_weight(model, open_clip.get_tokenizer(cfg.model.arch), data.spec.classnames, data.spec.templates)
        images = torch.stack([data.test[i][0] for i in range(len(data.test))])
        accuracy = feature_accuracy(model.encode_image(images), data.test.labels, head)
    assert abs(accuracy - reported) <= 100.0 / len(data.test) + 1e-9, (name, accuracy, reported)  # one sample at most
