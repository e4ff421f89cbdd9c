"""Cache entries are published atomically and rejected when their bytes change."""
import json
import os

import pytest

from neulig.utils.cache import CacheEntry, CacheError, config_hash


def test_hash_is_order_independent_and_sensitive():
    assert config_hash({"a": 1, "b": 2}) == config_hash({"b": 2, "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_publish_verify_and_truncation(tmp_path):
    entry = CacheEntry(tmp_path, "experts", "k1")
    entry.publish(lambda tmp: ((tmp / "x.bin").write_bytes(b"0123456789"), {"stage": "experts"})[1])
    assert entry.verify()["stage"] == "experts"
    assert not [p for p in (tmp_path / "experts").iterdir() if p.name.startswith(".")]  # no temp left
    (entry.dir / "x.bin").write_bytes(b"01234")  # truncated by a crash or an edit
    with pytest.raises(CacheError, match="content hash"):
        entry.verify()
    assert entry.load_meta() is None and not entry.dir.exists()  # rejected and removed


def test_failed_write_leaves_nothing(tmp_path):
    entry = CacheEntry(tmp_path, "experts", "k2")

    def broken(tmp):
        (tmp / "half.bin").write_bytes(b"partial")
        raise KeyboardInterrupt  # a kill in the middle of writing

    with pytest.raises(KeyboardInterrupt):
        entry.publish(broken)
    assert not entry.exists()
    assert list((tmp_path / "experts").iterdir()) == []


def test_meta_without_file_is_rejected(tmp_path):
    entry = CacheEntry(tmp_path, "heads", "k3")
    entry.dir.mkdir(parents=True)
    (entry.dir / "meta.json").write_text(json.dumps({"files": {"head.safetensors": "00"}}))
    with pytest.raises(CacheError, match="missing"):
        entry.verify()


KILLED_WRITER = """
import sys, time
from pathlib import Path
from neulig.utils.cache import CacheEntry

def write(tmp: Path) -> dict:
    (tmp / "encoder.safetensors").write_bytes(b"half a checkpoint")
    print("writing", flush=True)
    time.sleep(60)  # killed here, in the middle of writing
    return {}

CacheEntry(Path(sys.argv[1]), "experts", "k4").publish(write)
"""


def _killed_publish(root) -> int:
    """Run a publish in another process and SIGKILL it in the middle of writing; return its pid."""
    import subprocess
    import sys

    from tests.conftest import REPO

    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(root)], stdout=subprocess.PIPE, text=True,
                            cwd=REPO)
    assert proc.stdout.readline().strip() == "writing"
    proc.kill()
    proc.wait(timeout=30)
    return proc.pid


def test_temp_dir_of_a_killed_publish_is_never_trusted_and_removed_later(tmp_path):
    from tests.conftest import assert_cache_clean

    pid = _killed_publish(tmp_path)
    (left,) = assert_cache_clean(tmp_path, allow_temp=True)  # the kill left its temp dir, but no entry
    assert f"-{pid}." in left.name and not CacheEntry(tmp_path, "experts", "k4").exists()
    CacheEntry(tmp_path, "experts", "k5").publish(lambda tmp: ((tmp / "x.bin").write_bytes(b"1"), {})[1])
    assert not left.exists()  # the next publish in the stage removed the dead owner's temp dir
    assert assert_cache_clean(tmp_path) == []


def test_temp_dirs_of_live_or_foreign_owners_are_kept(tmp_path):
    from neulig.utils.cache import owner_tag, remove_stale_temps, temp_owner

    stage = tmp_path / "experts"
    mine = stage / f".k6.{owner_tag()}.abc.tmp"  # a publish in progress in this very process
    other_host = stage / f".k7.{owner_tag().replace('-', 'x-', 1)}.abc.tmp"  # pid not checkable from here
    unknown = stage / ".k8.abc.tmp"  # no owner in the name
    for path in (mine, other_host, unknown):
        path.mkdir(parents=True)
    assert temp_owner(mine.name) == (owner_tag().rpartition("-")[0], os.getpid())
    assert temp_owner(unknown.name) is None
    assert remove_stale_temps(stage) == []
    assert mine.exists() and other_host.exists() and unknown.exists()


def test_atomic_file_replaces_whole_or_not_at_all(tmp_path):
    from neulig.utils.cache import atomic_file

    target = tmp_path / "sub" / "merged.safetensors"
    with atomic_file(target) as tmp:
        tmp.write_bytes(b"first")
    assert target.read_bytes() == b"first" and target.stat().st_mode & 0o777 == 0o644
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"first"  # the old file is untouched
    assert [p.name for p in target.parent.iterdir()] == ["merged.safetensors"]  # no temp left
