"""Entry locks: exclusive, released, and taken over from dead owners (same host: pid; other host: heartbeat)."""
import json
import os
import time

from neulig.utils.lock import FileLock, Owner, computing_once, read_owner, this_host


def _foreign_lock(path, host="elsewhere", pid=1):
    path.write_text(json.dumps({"host": host, "pid": pid, "token": "t0", "since": 0}))
    return Owner(host, pid, "t0")


def test_lock_is_exclusive_and_released(tmp_path):
    path = tmp_path / ".k.lock"
    first, second = FileLock(path), FileLock(path)
    assert first.try_acquire() and not second.try_acquire()
    assert read_owner(path) == first.owner and first.owner.host == this_host() and first.owner.pid == os.getpid()
    first.release()
    assert not path.exists() and second.try_acquire()
    first.release()  # no longer its lock: left alone
    assert read_owner(path) == second.owner
    second.release()


def test_lock_of_a_dead_pid_on_this_host_is_taken_over_at_once(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path = tmp_path / ".k.lock"
    owner = _foreign_lock(path, this_host(), int(dead.stdout))
    said = []
    with computing_once(path, "the toy", lambda: False, said.append, stale_s=3600, poll_s=0.01) as mine:
        assert mine and read_owner(path).pid == os.getpid()
    assert said == [f"waiting for the toy: {owner} is computing it (lock {path})",
                    f"taking over the toy: the lock's {owner} is no longer running"]
    assert list(tmp_path.iterdir()) == []  # the stale lock and ours are gone


def test_lock_of_another_host_is_taken_over_only_when_its_heartbeat_stops(tmp_path):
    path = tmp_path / ".k.lock"
    owner = _foreign_lock(path)
    lock = FileLock(path, stale_s=0.3)
    for _ in range(5):  # the owner on the other host refreshes its lock: alive however long we watch
        assert lock.dead_reason(owner) is None
        time.sleep(0.1)
        os.utime(path, ns=(time.time_ns(), time.time_ns()))
    assert lock.dead_reason(owner) is None  # its last refresh, seen now
    time.sleep(0.4)  # ... and no refresh since
    assert "has not refreshed it" in lock.dead_reason(owner)
    assert lock.break_stale(owner) and not path.exists()


def test_a_fresh_lock_is_never_broken_in_place_of_the_stale_one(tmp_path):
    path = tmp_path / ".k.lock"
    stale = Owner("elsewhere", 1, "old")
    fresh = _foreign_lock(path, "elsewhere", 2)  # another waiter took over first and holds a new lock
    assert not FileLock(path).break_stale(stale)
    assert read_owner(path) == fresh and [p.name for p in tmp_path.iterdir()] == [".k.lock"]


def test_a_waiter_returns_without_the_lock_once_the_result_is_published(tmp_path):
    path = tmp_path / ".k.lock"
    holder = FileLock(path)
    assert holder.try_acquire()
    published = iter([False, False, True])
    with computing_once(path, "the toy", lambda: next(published), lambda line: None, poll_s=0.01) as mine:
        assert not mine and read_owner(path) == holder.owner
    holder.release()
