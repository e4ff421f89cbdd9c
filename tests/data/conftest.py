"""Every data test sees an empty huggingface_hub cache of its own, never the machine's."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def empty_hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    cache = tmp_path / "hub-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache
