"""align= in a whole diverse-origin run: the experts are aligned before the merge, every ensemble is
unchanged (an ensemble does not see the order of hidden units), and the run reports what alignment did."""
from tests.conftest import TINY_OVERRIDES, compose, execute

DIVERSE = [*TINY_OVERRIDES, "data.datasets=[digits,shapes]", "model.finetune.epochs=1", "logger=none",
           "model.origins=[0,1]", "merge=average"]


def test_alignment_changes_the_merge_not_the_ensemble(tmp_path):
    plain = execute(compose([*DIVERSE, "align=none"], tmp_path), tmp_path / "none")
    aligned = execute(compose([*DIVERSE, "align=mudsc", "align.images=64"], tmp_path), tmp_path / "mudsc")
    for key, value in plain["metrics"].items():
        if key.startswith(("acc/ensembled/", "acc/pretrained/", "acc/finetuned/")):
            assert aligned["metrics"][key] == value, key
    assert aligned["run_name"].endswith("-mudsc") and not plain["run_name"].endswith("-none")
    assert not any(k.startswith("align/") for k in plain["metrics"])
    assert 0 <= aligned["metrics"]["align/avg/unmoved"] <= 1 and aligned["metrics"]["align/seconds"] > 0
    groups = aligned["combos"][0]["result"]["alignment"]["groups"]
    assert "residual" in " ".join(groups) and any("mlp" in g for g in groups)
