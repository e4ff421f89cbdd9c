"""Session-cached towers for the alignment tests (building and calibrating them once per run)."""
from __future__ import annotations

from collections.abc import Callable

import pytest
from torch import Tensor, nn

from tests.alignment.towers import build, lively_state


@pytest.fixture(scope="session")
def tower() -> Callable[[str], tuple[nn.Module, dict[str, Tensor]]]:
    """``tower(name) -> (visual, state)``; shared by every test: never modify them."""
    cache: dict[str, tuple[nn.Module, dict[str, Tensor]]] = {}

    def get(name: str) -> tuple[nn.Module, dict[str, Tensor]]:
        if name not in cache:
            visual = build(name)
            cache[name] = (visual, lively_state(visual))
        return cache[name]

    return get


@pytest.fixture(autouse=True)
def _one_thread(one_thread) -> None:
    """Every alignment test runs on one torch thread (``tests/conftest.py``)."""
