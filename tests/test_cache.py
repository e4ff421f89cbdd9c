"""Cache entries are published atomically and rejected when their bytes change."""
import json

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
