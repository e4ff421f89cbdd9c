"""Content-addressed cache entries, written atomically and verified on load.

Every stage of the pipeline stores its product in ``<cache_dir>/<stage>/<key>/`` where ``key`` is a
hash of exactly the configuration that determines the product (plus the keys of its inputs). A
directory is published by an atomic rename of a fully written temp directory, and its ``meta.json``
records the SHA-256 of every file, so a killed run never leaves an entry a later run would trust.
A temp directory's name carries its owner (``.<key>.<host>-<pid>.<random>.tmp``); the next publish
in the same stage removes the temp directories of owners on this host that are no longer running,
so a killed run leaves no garbage behind for good.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

CACHE_VERSION = 1
TEMP_SUFFIX = ".tmp"


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


def content_digest(path: Path, memo_dir: Path | None = None) -> str:
    """SHA-256 of a file's bytes, or of a folder's files (relative names and bytes), so that a different
    file is never mistaken for another of the same size. With ``memo_dir`` it is computed once per
    (resolved path, size, modification time) and remembered in ``<memo_dir>/digests.json``."""
    path = Path(path).resolve()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    stamp = [[str(p.relative_to(path) if path.is_dir() else p.name), p.stat().st_size, p.stat().st_mtime_ns]
             for p in files]
    memo_path = Path(memo_dir) / "digests.json" if memo_dir is not None else None
    memo = _read_memo(memo_path)
    entry = memo.get(str(path))
    if entry and entry.get("stamp") == stamp:
        return entry["sha256"]
    if path.is_dir():
        digest = hashlib.sha256("".join(f"{name}\0{file_sha256(p)}\0" for (name, *_), p in zip(stamp, files))
                                .encode()).hexdigest()
    else:
        digest = file_sha256(path)
    if memo_path is not None:
        memo[str(path)] = {"stamp": stamp, "sha256": digest}
        atomic_write_text(memo_path, json.dumps(memo, indent=1, sort_keys=True))
    return digest


def _read_memo(path: Path | None) -> dict:
    if path is None or not path.is_file():
        return {}
    try:
        memo = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}  # a damaged memo only costs a recomputation
    return memo if isinstance(memo, dict) else {}


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; once the block has written it, rename it onto ``path``
    (atomic), readable by everyone (mkstemp makes 0600). On any error the temp file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """Yield a temp folder beside ``path``; once the block has filled it, rename it onto ``path`` (an
    existing folder is moved aside first and removed after). On any error nothing of the new folder is
    left and an old one is put back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not path.is_dir():
        from neulig.errors import NeuligError

        raise NeuligError(f"{path} exists and is not a folder; choose another path")
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX))
    old = None
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not path.exists():
            os.replace(old, path)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file in the same folder and an atomic rename."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def owner_tag(pid: int | None = None) -> str:
    """``<host>-<pid>`` of this process (dots in the host name become ``_``, the name's separator)."""
    return f"{socket.gethostname().replace('.', '_')}-{os.getpid() if pid is None else pid}"


def temp_owner(name: str) -> tuple[str, int] | None:
    """(host, pid) of a publish temp dir name ``.<key>.<host>-<pid>.<random>.tmp``; None for other names."""
    if not (name.startswith(".") and name.endswith(TEMP_SUFFIX)):
        return None
    parts = name[1 : -len(TEMP_SUFFIX)].split(".")
    host, _, pid = parts[1].rpartition("-") if len(parts) == 3 else ("", "", "")
    return (host, int(pid)) if host and pid.isdigit() else None


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process on this host (one owned by another user counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(stage_dir: Path) -> list[Path]:
    """Remove the publish temp dirs in ``stage_dir`` whose owner on this host has died; return them.

    Temp dirs of live processes, of other hosts (their pids cannot be checked from here) and of
    unknown owners are left alone: they are never trusted anyway.
    """
    host = owner_tag().rpartition("-")[0]
    removed = []
    for path in sorted(Path(stage_dir).glob(f".*{TEMP_SUFFIX}")):
        owner = temp_owner(path.name)
        if owner is not None and owner[0] == host and not process_alive(owner[1]):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


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

    @contextmanager
    def computing(self, label: str) -> Iterator[bool]:
        """Wait until this process may compute the entry (True) or another process has published it
        (False); the lock ``<stage>/.<key>.lock`` is held for the block (:mod:`neulig.utils.lock`)."""
        from neulig.utils.cores import waiting
        from neulig.utils.lock import computing_once
        from neulig.utils.log import log

        with computing_once(self.dir.parent / f".{self.key}.lock", label, self.exists, log.info, waiting) as mine:
            yield mine

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

    def load_meta(self, rebuild: str = "rebuilding it") -> dict | None:
        """Verified metadata, or None when the entry is absent or corrupt (a corrupt one is removed and
        one warning line says what was wrong and ``rebuild``, what happens instead)."""
        if not self.exists():
            return None
        try:
            return self.verify()
        except CacheError as err:
            from neulig.utils.log import log

            log.warning(f"cache entry rejected: {err}; {rebuild}")
            shutil.rmtree(self.dir, ignore_errors=True)
            return None

    def publish(self, write: Callable[[Path], dict]) -> dict:
        """Build the entry in a temp dir with ``write(tmpdir) -> meta`` and rename it into place."""
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.dir.parent)  # what killed runs left behind
        tmp = Path(tempfile.mkdtemp(dir=self.dir.parent, prefix=f".{self.key}.{owner_tag()}.", suffix=TEMP_SUFFIX))
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
