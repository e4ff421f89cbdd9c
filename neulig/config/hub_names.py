"""Hub repository names, ``hf://<org>/<name>``: string-only, so the config schema checks them before any
heavy import (``neulig.models.hub`` reads the repositories)."""
from __future__ import annotations

import re

HF_SCHEME = "hf://"
_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


def is_hub(value: object) -> bool:
    return isinstance(value, str) and value.startswith(HF_SCHEME)


def syntax_problem(value: str) -> str | None:
    """Why ``value`` (``hf://...``) is not a hub repository name, or None."""
    repo = value[len(HF_SCHEME):]
    if _REPO.fullmatch(repo) and ".." not in repo:
        return None
    return f"hf://<org>/<name>, e.g. hf://openai/clip-vit-base-patch32 (got {repo!r} after hf://)"


def hub_repo(value: str) -> str:
    """The repository id ``<org>/<name>`` of ``hf://<org>/<name>``."""
    return value[len(HF_SCHEME):]
