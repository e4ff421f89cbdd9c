"""The real open_clip architectures (random init) run the whole pipeline on the synthetic tasks (CPU)."""
import pytest

from tests.conftest import compose, execute


@pytest.mark.slow
@pytest.mark.parametrize("model", ["vit_b32", "rn50"])
def test_real_architecture_full_pipeline_on_synthetic(model, tmp_path):
    cfg = compose([f"model={model}", "model.pretrained=null", "data=synthetic", "data.sizes.train=16",
                   "data.sizes.val=8", "data.sizes.test=8", "model.finetune.epochs=1", "model.finetune.batch_size=8",
                   "model.finetune.num_workers=0", "eval.batch_size=8", "merge=portland", "merge.global_epochs=3",
                   "merge.eval_every=1", "merge.merged_batch_size=8", "logger=none"], tmp_path)
    record = execute(cfg, tmp_path / "run")
    metrics = record["metrics"]
    for key in ("acc/merged/avg", "acc/ensembled/avg", "gap/avg", "acc/finetuned/avg", "acc/pretrained/avg",
                "acc/merged_task/avg", "acc/merged_global/avg"):
        assert 0.0 <= metrics[key] <= 100.0, key
