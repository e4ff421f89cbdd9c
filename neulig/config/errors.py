"""Hydra's and OmegaConf's composition errors as one :class:`ConfigError` line each.

Hydra reports a bad override over several lines (the override, the converter's message, the node's
types, a hint about HYDRA_FULL_ERROR). The user needs one: which option, which value, what is allowed.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Sequence

from neulig.config.fields import ConfigError

TYPE_NAMES = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false", "String": "a string"}
OVERRIDE = re.compile(r"Error merging override (?P<key>[^=\s]+)=(?P<value>.*)$", re.MULTILINE)
NOT_OVERRIDDEN = re.compile(r"Could not (?:override|append to config\. An item is already at) '(?P<key>[^']+)'")
CONVERT = re.compile(r"could not be converted to (?P<type>\w+)")


def renamed_key(prefix: str, renamed: str) -> str:
    """The new key of a renamed option: ``renamed`` within the same group (``prefix``, e.g. ``merge.``), or,
    when it is dotted, a key of the whole config (``ensemble.level``)."""
    return renamed if "." in renamed else f"{prefix}{renamed}"


def _override(err: BaseException, overrides: Sequence[str]) -> tuple[str, str] | None:
    """The (key, value) of the override the error is about, from its message or the command line."""
    match = OVERRIDE.search(str(err))
    if match:
        return match["key"].lstrip("+~"), match["value"]
    match = NOT_OVERRIDDEN.search(str(err))
    if match:
        for override in overrides:
            key, _, value = override.lstrip("+~").partition("=")
            if key == match["key"]:
                return key, value
        return match["key"], ""
    return None


def _cause(err: BaseException) -> BaseException:
    """The first OmegaConf error under ``err`` (Hydra chains some as causes, some only as context)."""
    while not _is_omegaconf(err) and (err.__cause__ or err.__context__) is not None:
        err = err.__cause__ or err.__context__
    return err


def _is_omegaconf(err: BaseException) -> bool:
    return type(err).__module__.startswith("omegaconf")


def _known_options(object_type: type | None) -> str:
    if object_type is None or not dataclasses.is_dataclass(object_type):
        return ""
    return "; its options: " + ", ".join(f.name for f in dataclasses.fields(object_type))


def translate(err: BaseException, overrides: Sequence[str] = ()) -> ConfigError:
    """The ConfigError that says in one line what ``err`` (a composition or conversion error) means;
    ``overrides`` (the command line) supplies the value when the message does not quote it."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, ValidationError

    if isinstance(err, ConfigError):
        return err
    if isinstance(err, OverrideParseException):
        key, _, value = err.override.partition("=")
        return ConfigError(key, value, f"cannot be parsed ({err.message.splitlines()[0]})")
    if isinstance(err, MissingConfigException):
        match = re.search(r"Could not (?:find|load) '(?P<path>[^']+)'", str(err))
        path = match["path"] if match else str(err.missing_cfg_file)
        group, _, option = path.rpartition("/")
        options = ", ".join(sorted(o for o in (err.options or []) if not o.startswith("_")))
        return ConfigError(group or "config", option, f"one of {options}" if options else "an existing config")
    override = _override(err, overrides)
    cause = _cause(err)
    key = getattr(cause, "full_key", None) or (override[0] if override else "config")
    value = override[1] if override and override[0] == key else getattr(cause, "value", None)
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
        object_type = getattr(cause, "object_type", None)
        renamed = getattr(object_type, "RENAMED", {}).get(key.rpartition(".")[2])
        if renamed:
            return ConfigError(key, value, f"renamed: use {renamed_key(key.rpartition('.')[0] + '.', renamed)}")
        return ConfigError(key, value, "not an option" + _known_options(object_type))
    if isinstance(cause, MissingMandatoryValue):
        return ConfigError(key, "???", "required: set it in the group's yaml or on the command line")
    if isinstance(cause, ValidationError):
        converted = CONVERT.search(cause.msg or "")
        if converted:
            return ConfigError(key, value, TYPE_NAMES.get(converted["type"], f"a value of type {converted['type']}"))
        if "is not a subclass" in (cause.msg or "") or "Invalid type assigned" in (cause.msg or ""):
            return ConfigError(key, value, f"a value of the declared type ({cause.msg.splitlines()[0]})")
        return ConfigError(key, value, (cause.msg or type(cause).__name__).splitlines()[0])
    first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    return ConfigError(key, value if value is not None else "", first)
