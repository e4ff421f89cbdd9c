"""The config schema: one dataclass module per group, registered in Hydra's ConfigStore.

``register()`` stores every schema (called before Hydra composes); a group's yaml selects its schema
in its defaults list (``/schema/<group>@_here_`` or ``/schema/merge/<name>@_here_``), so Hydra checks
types and unknown keys while it composes. ``load(cfg)`` turns the composed DictConfig into the typed
:class:`Config` and checks every declared value rule (:mod:`neulig.config.fields`); it raises a
:class:`ConfigError` naming the first wrong option. Nothing here imports torch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from neulig.config.errors import renamed_key
from neulig.config.fields import ConfigError, check_fields
from neulig.config.root import Config

__all__ = ["CONF_DIR", "Config", "ConfigError", "compose", "load", "register"]

CONF_DIR = Path(__file__).resolve().parent.parent.parent / "conf"  # the CLI's config folder

_registered = False


def register() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent)."""
    global _registered
    if _registered:
        return
    from hydra.core.config_store import ConfigStore

    from neulig.config.align import AlignConfig
    from neulig.config.data import DataConfig
    from neulig.config.logger import LoggerConfig
    from neulig.config.merge import SCHEMAS
    from neulig.config.model import ModelConfig
    from neulig.config.paths import PathsConfig
    from neulig.config.trainer import TrainerConfig

    store = ConfigStore.instance()
    store.store(name="config", group="schema", node=Config)
    for group, node in (("paths", PathsConfig), ("model", ModelConfig), ("data", DataConfig),
                        ("trainer", TrainerConfig), ("logger", LoggerConfig), ("align", AlignConfig)):
        store.store(name=group, group="schema", node=node)
    for name, node in SCHEMAS.items():
        store.store(name=name, group="schema/merge", node=node)
    _registered = True


def compose(overrides: list[str], config_name: str = "config", config_dir: str | Path | None = None,
            extra_dir: str | Path | None = None) -> Any:
    """The CLI's composed config (a DictConfig, not yet checked: :func:`load` checks it) with ``overrides``,
    as ``python -m neulig.run`` composes it: ``config_name`` (``--config-name``) from ``config_dir``
    (``--config-path``, default conf/), with ``extra_dir`` (``--config-dir``) searched first."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode
    from omegaconf import open_dict

    register()
    search_path = create_config_search_path(str(Path(config_dir or CONF_DIR).resolve()))
    if extra_dir is not None:
        search_path.prepend(provider="command-line", path=f"file://{Path(extra_dir).resolve()}",
                            anchor=SearchPathQuery(provider="schema"))
    outer = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    GlobalHydra.instance().clear()
    try:
        hydra = Hydra.create_main_hydra2(task_name="neulig", config_search_path=search_path)
        try:
            cfg = hydra.compose_config(config_name, overrides, run_mode=RunMode.RUN, with_log_configuration=False)
        except (AssertionError, AttributeError) as err:  # OmegaConf setting a field of a null node
            if "NoneType" not in str(err):
                raise
            raise null_parent_error(hydra, config_name, overrides) or err from None
    finally:
        GlobalHydra.instance().clear()
        if outer is not None:
            GlobalHydra.instance().initialize(outer)
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


def null_parent_error(hydra: Any, config_name: str, overrides: list[str]) -> ConfigError | None:
    """The override that sets a field inside a node that is null in this config (``model.pretrain.steps=3``
    with ``model=vit_b32``), found by composing without such overrides; None when none is."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    parsed = OverridesParser.create().parse_overrides(overrides)
    dotted = [o for o in parsed if "." in o.key_or_group and not o.is_delete()]
    base = hydra.compose_config(config_name, [o.input_line for o in parsed if o not in dotted], run_mode=RunMode.RUN,
                                with_log_configuration=False)
    for override in dotted:
        parts = override.key_or_group.split(".")
        for end in range(1, len(parts) + 1):
            parent = ".".join(parts[:end])
            if OmegaConf.select(base, parent, throw_on_missing=False) is None and parent in _set_keys(base, parts[:end]):
                what = f"it has no {parts[end]} to set" if end < len(parts) else "it takes no mapping from the command line"
                return ConfigError(override.key_or_group, override.value(), f"{parent} is null in this config, so "
                                   f"{what} (set {parent} in its group's yaml first)")
    return None


def _set_keys(cfg: Any, parts: list[str]) -> set[str]:
    """``{".".join(parts)}`` when that node exists (even as null) in ``cfg``, else an empty set."""
    node = cfg
    for part in parts[:-1]:
        node = node.get(part) if node is not None else None
    return {".".join(parts)} if node is not None and parts[-1] in node else set()


def load(cfg: Any) -> Config:
    """The typed, checked config of a composed DictConfig (Hydra's ``hydra`` node is ignored)."""
    from omegaconf import OmegaConf

    from neulig.config.errors import translate

    check_declared(cfg, "")
    try:
        config = OmegaConf.to_object(cfg)
    except Exception as err:  # noqa: BLE001 - OmegaConf's errors become one line naming the option
        raise translate(err) from None
    check_fields(config, "")
    return config


def check_declared(node: Any, prefix: str) -> None:
    """Every key of a schema-typed node is one of its fields. Hydra lets ``+key=value`` append keys
    even to a typed config; this is where such a key is refused."""
    import dataclasses

    from omegaconf import DictConfig, OmegaConf

    if not isinstance(node, DictConfig):
        return
    schema = OmegaConf.get_type(node)
    fields = {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    for key in node.keys():
        if fields is not None and key not in fields:
            value = OmegaConf.to_container(node, resolve=False).get(key)
            renamed = getattr(schema, "RENAMED", {}).get(key)
            raise ConfigError(f"{prefix}{key}", value, f"renamed: use {renamed_key(prefix, renamed)}" if renamed else
                              "not an option; its options: " + ", ".join(sorted(fields)))
        if fields is not None:
            check_declared(node._get_node(key), f"{prefix}{key}.")
