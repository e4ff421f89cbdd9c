"""Session-cached towers for the alignment tests (building and calibrating them once per run)."""
from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from torch import Tensor, nn

from tests.alignment.towers import build, lively_state


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread: these models are tiny, and on a shared 2-core machine OpenMP threads spin-wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
