"""Every option of every config group composes against its schema, and no yaml key escapes the schema."""
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from neulig.config import Config, load
from tests.conftest import CONF, compose

GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("hydra",))
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]
SCHEMA_GROUPS = ("paths", "model", "data", "merge", "trainer", "logger", "align")  # every option selects its schema
GLOBAL_GROUPS = ("experiment", "hparams_search", "preset")  # `# @package _global_`: their keys land in the groups above


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_into_the_typed_config(group, option, tmp_path):
    if group == "hparams_search":
        pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="optional extra neulig[optuna]")
    prefix = "+" if group in ("experiment", "hparams_search") else ""  # not in the primary defaults list
    config = load(compose([f"{prefix}{group}={option}"], tmp_path))
    assert isinstance(config, Config)
    if group == "merge":
        assert config.merge.name == option


def yaml_keys(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        if key in ("defaults", "hydra"):
            continue
        keys.append(prefix + key)
        if isinstance(value, dict):
            keys += yaml_keys(value, f"{prefix}{key}.")
    return keys


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_key_of_every_yaml_is_declared_in_the_schema(group, option):
    """A new key in a yaml cannot bypass the schema: each group yaml selects a schema in its defaults
    list, and each of its keys (and each key an experiment sets) is a field of the typed config."""
    text = yaml.safe_load((CONF / group / f"{option}.yaml").read_text()) or {}
    if group in SCHEMA_GROUPS:
        schema = "/schema/merge/" if group == "merge" else f"/schema/{group}@_here_"
        assert any(str(d).startswith(schema) for d in text.get("defaults", [])), f"{group}/{option}.yaml names no schema"
    root = "" if group in GLOBAL_GROUPS else "merge." if group == "preset_merge" else f"{group}."
    from neulig.config.merge import SCHEMAS

    method = option if group == "merge" else preset_and_method(option)[1] if group == "preset_merge" else None
    for key in yaml_keys(text):
        node = _schema_node(root + key, method, SCHEMAS)
        assert node, f"{group}/{option}.yaml: key {root + key} is not declared in neulig/config"


def preset_and_method(option: str) -> tuple[str, str]:
    """A ``conf/preset_merge`` yaml's preset and method (``<preset>_<merge>``, both existing options)."""
    for preset in sorted((p.stem for p in (CONF / "preset").glob("*.yaml")), key=len, reverse=True):
        if option.startswith(preset + "_") and (CONF / "merge" / f"{option[len(preset) + 1:]}.yaml").exists():
            return preset, option[len(preset) + 1:]
    raise AssertionError(f"preset_merge/{option}.yaml is not <preset>_<merge> of an existing preset and method")


def _schema_node(dotted: str, merge_option: str | None, schemas: dict) -> bool:
    """Whether ``dotted`` is a field path of the schema (the merge group's by its yaml's schema)."""
    import dataclasses
    import typing

    from neulig.config.root import Config as Root

    node: object = Root
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if node is None:
            return True  # free-form mapping (e.g. epochs_per_dataset): any key is data
        if i == 1 and parts[0] == "merge":
            node = _merge_schema(merge_option, schemas)
        fields = {f.name: f for f in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else None
        if fields is None:
            return True
        if part not in fields:
            return False
        hint = typing.get_type_hints(node)[part]
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = inner[0] if typing.get_origin(hint) is typing.Union and inner else hint
        node = hint if dataclasses.is_dataclass(hint) else None
    return True


def _merge_schema(option: str | None, schemas: dict):
    if option is None:  # an experiment overriding merge keys: any method schema that declares them
        from neulig.config.merge import PortlandMerge

        return PortlandMerge
    text = yaml.safe_load((CONF / "merge" / f"{option}.yaml").read_text())
    name = next(str(d) for d in text["defaults"] if str(d).startswith("/schema/merge/"))
    return schemas[name[len("/schema/merge/"):].split("@")[0]]


def test_merge_registry_is_the_folder():
    names = {p.stem for p in (CONF / "merge").glob("*.yaml")}
    assert {"portland", "average", "task_arithmetic"} <= names
    for name in names:
        assert yaml.safe_load((CONF / "merge" / f"{name}.yaml").read_text())["name"] == name


def test_paths_follow_root(tmp_path):
    cfg = OmegaConf.to_container(compose([], tmp_path), resolve=True)
    assert Path(cfg["paths"]["cache_dir"]) == tmp_path / "outputs" / "cache"


def test_a_default_is_stated_once():
    """A value the schema declares as default is not repeated by a group yaml."""
    import dataclasses

    from neulig.config.data import DataConfig
    from neulig.config.model import ModelConfig
    from neulig.config.trainer import TrainerConfig

    for group, schema in (("data", DataConfig), ("model", ModelConfig), ("trainer", TrainerConfig)):
        defaults = {f.name: f.default for f in dataclasses.fields(schema)
                    if f.default is not dataclasses.MISSING and f.default != "???"}
        for path in (CONF / group).glob("*.yaml"):
            values = yaml.safe_load(path.read_text())
            repeated = sorted(k for k, v in defaults.items() if k in values and values[k] == v)
            assert not repeated, f"{group}/{path.name} repeats schema defaults {repeated}"
