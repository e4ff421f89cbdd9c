"""The tags a run is recorded with are its config's distinguishing options, with the text of its params."""
from __future__ import annotations

from dataclasses import asdict

from neulig.callbacks.mlflow import flatten
from neulig.report.tags import OPTION_PREFIX, distinguishing, options_of, run_tags
from tests.report.conftest import config_of


def test_run_tags_are_identity_and_one_tag_per_distinguishing_option():
    config = config_of(("+experiment=diverse_origin", "align=mudsc", "data.num_co_models=2", "seed=3",
                        "merge.views=0"), "sqlite:///unused.db")
    tags = run_tags(config)
    params = flatten(asdict(config))
    assert {k: tags[k] for k in ("backbone", "datasets", "merge", "merge.kind")} == {
        "backbone": "tiny", "datasets": "digits,mnist5k,shapes,textures", "merge": "portland", "merge.kind": "trained"}
    options = {k[len(OPTION_PREFIX):]: v for k, v in tags.items() if k.startswith(OPTION_PREFIX)}
    for key, text in {"seed": "3", "align.method": "mudsc", "data.num_co_models": "2", "model.origins": "['0', '1']",
                      "merge.views": "0", "merge.regularizer": "variance", "data.name": "embedded"}.items():  # the preset's
        assert options[key] == text == params[key], key
    # every option that can change a number, none that only says where the run wrote
    assert set(options) == {k for k in params if not k.startswith(
        ("paths.", "logger.", "progress", "data.root", "data.download", "model.download", "merge.runner",
         "trainer.enable_progress_bar", "save_merged", "save_format"))}
    assert "paths.output_dir" in params and "logger.experiment_name" in params and "data.root" in params


def test_options_come_from_tags_first_then_from_params_of_older_runs():
    tags = {"merge": "portland", f"{OPTION_PREFIX}seed": "1", f"{OPTION_PREFIX}merge.views": "2"}
    params = {"seed": "0", "merge.views": "4", "paths.root_dir": "/x"}
    assert options_of(tags, params) == {"seed": "1", "merge.views": "2"}  # tags win, params are not mixed in
    # a run recorded before the config.* tags: its params, without where it wrote
    assert options_of({"merge": "portland"}, {**params, "data.root": "./data", "logger.enabled": "True"}) == {
        "seed": "0", "merge.views": "4"}
    assert distinguishing({"progress": "auto", "eval.batch_size": "256"}) == {"eval.batch_size": "256"}
