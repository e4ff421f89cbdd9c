"""Every option of every config group composes with the root config, and resolves."""
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import CONF, compose

GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("hydra",))
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_resolves(group, option, tmp_path):
    if group == "hparams_search":
        pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="optional extra neulig[optuna]")
    prefix = "+" if group in ("experiment", "hparams_search") else ""
    cfg = compose([f"{prefix}{group}={option}"], tmp_path)
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert plain["model"]["arch"] and plain["data"]["datasets"]
    if group == "merge":
        assert plain["merge"]["name"] == option
        assert plain["merge"]["kind"] in ("static", "trained", "ensemble")


def test_merge_registry_is_the_folder():
    names = {p.stem for p in (CONF / "merge").glob("*.yaml")}
    assert {"portland", "average", "task_arithmetic"} <= names
    for name in names:
        cfg = OmegaConf.load(CONF / "merge" / f"{name}.yaml")
        assert cfg.name == name, f"conf/merge/{name}.yaml declares name {cfg.name}"
        if cfg.kind == "static":
            from neulig.combine import resolve

            assert callable(resolve(cfg.fn))


def test_paths_follow_root(tmp_path):
    cfg = OmegaConf.to_container(compose([], tmp_path), resolve=True)
    assert Path(cfg["paths"]["cache_dir"]) == tmp_path / "outputs" / "cache"
    assert cfg["logger"]["tracking_uri"] == f"sqlite:///{tmp_path}/outputs/mlflow.db"
