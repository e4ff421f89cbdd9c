"""One process computes a cache entry; the others wait for it and load it (docs/design.md, "Pipeline and caching").

A lock is a file beside the entry, ``<stage>/.<key>.lock``, created with ``O_CREAT | O_EXCL`` (atomic on a
local disk and on NFSv3 or later) and holding its owner: host, pid, a random token and the time it was
taken. While the owner computes, a daemon thread touches the file every ``heartbeat_s`` seconds. A lock
is taken over when its owner is gone:

- same host: the pid is no longer running (a kill -9 is noticed at the next poll);
- any host: the file's modification time has not changed for ``stale_s`` seconds of the *waiter's*
  clock (so clocks that disagree between hosts do not matter), which covers a preempted node, a pid
  reused by another process, and a lock whose owner died before it could write its name.

Taking over renames the stale file to a private name, checks that it is the one judged stale (else puts
it back) and deletes it; then the waiters race for a new lock with ``O_EXCL`` again. A race lost here only
costs a computation twice: entries are published by atomic rename and verified on load, so the lock
decides who works, never what is trusted.
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Iterator

from neulig.utils.cache import process_alive

HEARTBEAT_S = 10.0  # how often the owner touches its lock
STALE_S = 120.0  # a lock untouched this long is dead: above NFS's default attribute cache (acregmax 60 s)
POLL_S = 0.5  # how often a waiter looks again


@dataclass(frozen=True)
class Owner:
    """Who holds a lock (from the file's content; an empty or torn file gives ``Owner.unknown()``)."""

    host: str
    pid: int
    token: str

    @staticmethod
    def unknown() -> Owner:
        return Owner("?", -1, "")

    def __str__(self) -> str:
        return f"process {self.pid} on {self.host}" if self.pid >= 0 else "a process that has not written its name yet"


def this_host() -> str:
    return socket.gethostname()


def read_owner(path: Path) -> Owner | None:
    """The lock's owner; None when there is no lock."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return Owner.unknown()
    try:
        data = json.loads(text)
        return Owner(str(data["host"]), int(data["pid"]), str(data["token"]))
    except (ValueError, KeyError, TypeError):
        return Owner.unknown()


class FileLock:
    """An ``O_EXCL`` lock file with a heartbeat; see the module docstring for how it is taken over."""

    def __init__(self, path: Path, heartbeat_s: float = HEARTBEAT_S, stale_s: float = STALE_S):
        self.path = Path(path)
        self.heartbeat_s, self.stale_s = heartbeat_s, stale_s
        self.owner = Owner(this_host(), os.getpid(), secrets.token_hex(8))
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._seen: tuple[Owner, int, float] | None = None  # (owner, mtime_ns, when first seen) of the lock waited on

    def try_acquire(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as handle:
            json.dump({"host": self.owner.host, "pid": self.owner.pid, "token": self.owner.token,
                       "since": time.time()}, handle)
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, name=f"lock {self.path.name}", daemon=True)
        self._beat.start()
        return True

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except OSError:
                return  # taken over (we were judged dead) or the cache was removed: nothing left to refresh

    def release(self) -> None:
        """Stop the heartbeat and delete the lock, if it is still ours."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None
        if read_owner(self.path) == self.owner:
            self.path.unlink(missing_ok=True)

    def dead_reason(self, owner: Owner) -> str | None:
        """Why the lock held by ``owner`` is dead, or None while it looks alive."""
        if owner.host == this_host() and owner.pid >= 0 and not process_alive(owner.pid):
            return f"{owner} is no longer running"
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        now = time.monotonic()
        if self._seen is None or self._seen[:2] != (owner, mtime):
            self._seen = (owner, mtime, now)
            return None
        if now - self._seen[2] >= self.stale_s:
            return f"{owner} has not refreshed it for {now - self._seen[2]:.0f} s"
        return None

    def break_stale(self, owner: Owner) -> bool:
        """Remove the lock judged dead (held by ``owner``); False when another waiter was quicker."""
        grave = self.path.with_name(f"{self.path.name}.{self.owner.host}-{self.owner.pid}.{self.owner.token}.stale")
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return False
        if read_owner(grave) != owner:  # a new owner's fresh lock: put it back (unless yet another exists)
            try:
                os.link(grave, self.path)
            except OSError:
                pass
            grave.unlink(missing_ok=True)
            return False
        grave.unlink(missing_ok=True)
        self._seen = None
        return True


@contextmanager
def computing_once(path: Path, label: str, done: Callable[[], bool], say: Callable[[str], None],
                   idle: Callable[[], ContextManager] = nullcontext, heartbeat_s: float = HEARTBEAT_S,
                   stale_s: float = STALE_S, poll_s: float = POLL_S) -> Iterator[bool]:
    """Hold the lock ``path`` while the block computes ``label``: yields True once this process holds it,
    or False, without holding it, as soon as ``done()`` says another process has published the result.
    ``say`` gets one line when this process starts waiting (naming the owner) and one per takeover;
    the waiting runs inside ``idle()``."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, heartbeat_s, stale_s)
    mine = lock.try_acquire()
    if not mine:
        with idle():
            mine = wait_for(lock, label, done, say, poll_s)
    if not mine:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def wait_for(lock: FileLock, label: str, done: Callable[[], bool], say: Callable[[str], None], poll_s: float) -> bool:
    """Poll until ``lock`` is ours (True) or ``done()`` (False), taking over a dead owner's lock."""
    waited_for: Owner | None = None
    while not done():
        owner = read_owner(lock.path)
        if owner is not None and owner != waited_for:
            if waited_for is None:
                say(f"waiting for {label}: {owner} is computing it (lock {lock.path})")
            waited_for = owner
        reason = lock.dead_reason(owner) if owner is not None else None
        if reason is not None and lock.break_stale(owner):
            say(f"taking over {label}: the lock's {reason}")
        elif owner is not None:
            time.sleep(poll_s)
        if lock.try_acquire():
            return True
    return False
