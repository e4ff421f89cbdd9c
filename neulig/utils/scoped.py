"""Process state changed for one call and put back afterwards (nothing leaks into the next sweep job)."""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator


def put(name: str, value: str | None) -> None:
    """Set ``name`` to ``value``, or remove it for None."""
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


@contextmanager
def environ(**values: str | None) -> Iterator[None]:
    """Set (or, for None, remove) environment variables for the block; restore each one's previous
    value, or its absence, on the way out."""
    before = {name: os.environ.get(name) for name in values}
    try:
        for name, value in values.items():
            put(name, value)
        yield
    finally:
        for name, value in before.items():
            put(name, value)


@contextmanager
def random_state() -> Iterator[None]:
    """The global random generators (torch's CPU generator, Python's ``random``, NumPy's legacy one) and
    Lightning's ``PL_GLOBAL_SEED`` / ``PL_SEED_WORKERS`` as they were before the block. A run seeds them for itself
    (``L.seed_everything``); the next job of a sweep in the same process then starts from the same state as
    the first. CUDA generators are the device's own and are left alone."""
    import random

    import numpy as np
    import torch

    states = torch.get_rng_state(), random.getstate(), np.random.get_state()
    try:
        with environ(**{name: os.environ.get(name) for name in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")}):
            yield
    finally:
        torch.set_rng_state(states[0])
        random.setstate(states[1])
        np.random.set_state(states[2])
