"""The cached-stage type: a pipeline product computed once, published whole, verified on every load.

A stage's product is a set of named tensors in one safetensors file under
``<cache_dir>/<folder>/<key>/`` with a ``meta.json`` that records every file's SHA-256
(:class:`neulig.utils.cache.CacheEntry`). Its key hashes exactly what determines the product: the
caller passes those parts, and :meth:`CachedStage.fetch` owns the rest (look up, compute on a miss,
publish atomically, load and verify), so a stage function reads as its computation alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torch import Tensor

from neulig.errors import NeuligError
from neulig.models.checkpoints import load_state, save_state
from neulig.utils.cache import CacheEntry, config_hash
from neulig.utils.log import is_rank_zero, log

Tensors = dict[str, Tensor]


@dataclass(frozen=True)
class Cached:
    """A stage's product: its tensors, its cache key (the input of the stages that depend on it) and
    the metadata recorded when it was computed."""

    tensors: Tensors
    key: str
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class CachedStage:
    """``folder``: the cache folder; ``tag``: the hash namespace; ``file``: the safetensors file name;
    ``rebuild``: what a warning line says happens when a cached entry fails verification."""

    folder: str
    tag: str
    file: str
    rebuild: str = "rebuilding it"

    def key(self, *parts: Any) -> str:
        return config_hash(self.tag, *parts)

    def fetch(self, cache_dir: str | Path, parts: tuple, compute: Callable[[], tuple[Tensors, dict]],
              reference: Tensors | None = None, rebuild: str | None = None, label: str | None = None,
              exclusive: bool = True) -> Cached:
        """The product keyed by ``parts``: loaded when cached, else ``compute() -> (tensors, meta)`` once
        and published. With ``reference`` the loaded tensors must have its keys, shapes and dtypes; a
        verified entry of another layout is rebuilt rather than trusted. ``rebuild`` overrides what the
        warning about a rejected entry says happens instead.

        Across processes sharing the cache, one computes while the others wait on the entry's lock
        (saying once for ``label``, default the folder and key, which process they wait for) and then
        load its result; a lock of a dead process is taken over (:mod:`neulig.utils.lock`).
        ``exclusive=False`` computes without the lock: a DDP run whose rank 0 waited while the other
        ranks trained would hang."""
        rebuild = rebuild or self.rebuild
        entry = CacheEntry(Path(cache_dir), self.folder, self.key(*parts))
        cached = self.load(entry, reference, rebuild)
        if cached is not None:
            return cached
        if not (exclusive and is_rank_zero()):  # a DDP child computes what rank 0 computes, and leaves the writing to it
            return self.compute(entry, compute, publish=is_rank_zero())
        with entry.computing(f"{label or self.folder} ({self.folder}/{entry.key})"):
            # published while we waited, or just before we took the lock: loaded; else computed here
            return self.load(entry, reference, rebuild) or self.compute(entry, compute, publish=True)

    def load(self, entry: CacheEntry, reference: Tensors | None, rebuild: str) -> Cached | None:
        """The verified entry, or None when it is absent or rejected (a rejected one is removed)."""
        meta = entry.load_meta(rebuild=rebuild)
        if meta is None:
            return None
        try:
            return Cached(load_state(entry.dir / self.file, reference), entry.key, meta)
        except NeuligError as err:
            log.warning(f"{err}; {rebuild}")
            import shutil

            shutil.rmtree(entry.dir, ignore_errors=True)
            return None

    def compute(self, entry: CacheEntry, compute: Callable[[], tuple[Tensors, dict]], publish: bool) -> Cached:
        from neulig.utils.cores import resize

        resize()  # this run's share of the cores, now that the others may be waiting for this stage
        tensors, meta = compute()
        if publish:
            meta = self.publish(entry, tensors, meta)
        return Cached(tensors, entry.key, meta)

    def publish(self, entry: CacheEntry, tensors: Tensors, meta: dict) -> dict:
        """Write ``tensors`` into ``entry`` (atomically); returns the recorded metadata."""
        return entry.publish(lambda tmp: (save_state(tmp / self.file, tensors), {"stage": self.folder, **meta})[1])
