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


def compose(overrides: list[str]) -> Any:
    """The CLI's composed config (a DictConfig, not yet checked: :func:`load` checks it) with ``overrides``,
    for entry points other than ``python -m neulig.run``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


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
