"""Content-addressed cache entries, written atomically and verified on load.

Every stage of the pipeline stores its product in ``<cache_dir>/<stage>/<key>/`` where ``key`` is a
hash of exactly the configuration that determines the product (plus the keys of its inputs). A
directory is published by an atomic rename of a fully written temp directory, and its ``meta.json``
records the SHA-256 of every file, so a killed run never leaves an entry a later run would trust.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

CACHE_VERSION = 1


class CacheError(RuntimeError):
    """A cache entry exists but fails verification (truncated, edited, or from another layout)."""


def config_hash(*parts: Any) -> str:
    """Stable 16-hex-digit hash of JSON-serialisable parts (key order independent)."""
    blob = json.dumps([CACHE_VERSION, *parts], sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class CacheEntry:
    """One cache directory ``root/stage/key`` with a verified ``meta.json``."""

    def __init__(self, root: Path, stage: str, key: str):
        self.dir = Path(root) / stage / key
        self.stage = stage
        self.key = key

    @property
    def meta_path(self) -> Path:
        return self.dir / "meta.json"

    def exists(self) -> bool:
        return self.meta_path.is_file()

    def verify(self) -> dict:
        """Return the entry's metadata after checking every recorded file hash."""
        try:
            meta = json.loads(self.meta_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise CacheError(f"{self.dir}: unreadable meta.json ({err})") from err
        for name, digest in meta.get("files", {}).items():
            path = self.dir / name
            if not path.is_file():
                raise CacheError(f"{path}: missing file recorded in meta.json")
            if file_sha256(path) != digest:
                raise CacheError(f"{path}: content hash differs from meta.json (truncated or edited)")
        return meta

    def load_meta(self) -> dict | None:
        """Verified metadata, or None when the entry is absent or corrupt (a corrupt one is removed)."""
        if not self.exists():
            return None
        try:
            return self.verify()
        except CacheError as err:
            from neulig.utils.log import log

            log.warning(f"cache entry rejected, rebuilding: {err}")
            shutil.rmtree(self.dir, ignore_errors=True)
            return None

    def publish(self, write: Callable[[Path], dict]) -> dict:
        """Build the entry in a temp dir with ``write(tmpdir) -> meta`` and rename it into place."""
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.dir.parent, prefix=f".{self.key}.", suffix=".tmp"))
        try:
            meta = dict(write(tmp))
            meta["files"] = {p.name: file_sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
            meta["key"] = self.key
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
            if self.dir.exists():  # another job finished first: keep theirs, both are identical
                shutil.rmtree(tmp, ignore_errors=True)
                return self.verify()
            os.replace(tmp, self.dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return meta
