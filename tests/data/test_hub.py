"""The hub source: FusionBench-layout parquet repositories read with pyarrow (no network: local copies and
a hand-made huggingface_hub cache; fetching through the hub protocol is rehearsed in tests/integration)."""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from neulig.data.hub import cached_copy, card_classnames, read_card, shards_complete, split_files
from neulig.data.real import REAL_SPECS, class_order, load_real_dataset
from neulig.errors import NeuligError
from tests.hub_datasets import write_parquet_dataset

DTD = list(REAL_SPECS["dtd"].classnames)


def hub_repo(tmp_path: Path, repo_id: str, classnames: list[str], sizes: dict[str, int]) -> Path:
    write_parquet_dataset(tmp_path / "served", repo_id, classnames, sizes)
    return tmp_path / "served" / "datasets" / repo_id


def place(repo: Path, folder: Path) -> Path:
    shutil.copytree(repo, folder)
    return folder


def put_in_hub_cache(cache: Path, repo_id: str, repo: Path, revision: str = "0" * 40) -> Path:
    """The layout huggingface_hub's cache gives a fetched dataset repository (refs/main -> snapshot)."""
    base = cache / f"datasets--{repo_id.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(revision)
    return place(repo, base / "snapshots" / revision)


def test_the_card_names_the_classes_and_the_split_files(tmp_path):
    repo = hub_repo(tmp_path, "tanganke/dtd", DTD, {"train": 6, "test": 4})
    assert card_classnames(read_card(repo)) == DTD
    files = split_files(repo)
    assert {k: [f.name for f in v] for k, v in files.items()} == {
        "train": ["train-00000-of-00001.parquet"], "test": ["test-00000-of-00001.parquet"]}


def test_a_missing_shard_makes_a_copy_incomplete(tmp_path):
    names = [Path(f"data/train-0000{k}-of-00003.parquet") for k in (0, 2)]
    assert not shards_complete(names)
    assert shards_complete([*names, Path("data/train-00001-of-00003.parquet")])
    repo = hub_repo(tmp_path, "tanganke/dtd", DTD, {"train": 6, "test": 4})
    (repo / "data" / "test-00000-of-00001.parquet").unlink()
    assert split_files(repo) is None, "a copy without its test split does not count"


def test_a_local_copy_loads_with_our_protocol(tmp_path):
    repo = hub_repo(tmp_path, "tanganke/dtd", DTD, {"train": 100, "test": 30})
    place(repo, tmp_path / "data" / "dtd")
    data = load_real_dataset("dtd", tmp_path / "data", 16, source="hub", sizes={"train": None, "val": None, "test": 20})
    # val: a seeded 10% of the hub's train split; test: the hub's test split, capped to 20
    assert (len(data.train), len(data.val), len(data.test)) == (90, 10, 20)
    assert "from a copy of hub tanganke/dtd" in data.split_note and "official test split (30)" in data.split_note
    image, label = data.train[5]
    assert image.shape == (3, 16, 16) and label.dtype == torch.long
    row = data.train.index[5]
    assert int(label) == row % len(DTD), "labels come from the label column, in the card's (= our) order"
    table = pq.read_table(tmp_path / "data" / "dtd" / "data" / "train-00000-of-00001.parquet")
    encoded = table.column("image")[row].as_py()["bytes"]
    pixels = np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))
    assert data.train.base.encoded(row) == encoded and pixels.shape == (24, 24, 3)


def test_a_source_ordering_classes_differently_is_mapped_by_name(tmp_path):
    theirs = DTD[1:] + DTD[:1]  # the card lists our class 0 last
    repo = hub_repo(tmp_path, "tanganke/dtd", theirs, {"train": 60, "test": 47})
    place(repo, tmp_path / "data" / "dtd")
    data = load_real_dataset("dtd", tmp_path / "data", 16, source="hub")
    expected = [DTD.index(theirs[i % len(theirs)]) for i in range(47)]
    assert data.test.labels.tolist() == expected
    assert class_order(theirs, DTD).tolist() == [DTD.index(n) for n in theirs]
    assert class_order(DTD, DTD) is None and class_order(["a", "b"], ["a", "c"]) is None


def test_a_card_with_another_class_count_is_refused(tmp_path):
    repo = hub_repo(tmp_path, "tanganke/dtd", DTD[:5], {"train": 6, "test": 4})
    place(repo, tmp_path / "data" / "dtd")
    with pytest.raises(NeuligError, match="has 5 classes, expected 47"):
        load_real_dataset("dtd", tmp_path / "data", 16, source="hub")


def test_the_hub_cache_is_used_as_it_is_offline(tmp_path, empty_hub_cache):
    repo = hub_repo(tmp_path, "tanganke/eurosat", list(REAL_SPECS["eurosat"].classnames), {"train": 40, "test": 10})
    assert cached_copy("tanganke/eurosat") is None
    put_in_hub_cache(empty_hub_cache, "tanganke/eurosat", repo)
    data = load_real_dataset("eurosat", tmp_path / "data", 16, download=False)
    assert (len(data.train), len(data.val), len(data.test)) == (36, 4, 10)
    assert "hub tanganke/eurosat (cached)" in data.split_note
    assert not (tmp_path / "data").exists(), "reading the cache writes nothing under data.root"


def test_source_torchvision_ignores_the_hub_cache(tmp_path, empty_hub_cache):
    repo = hub_repo(tmp_path, "tanganke/eurosat", list(REAL_SPECS["eurosat"].classnames), {"train": 40, "test": 10})
    put_in_hub_cache(empty_hub_cache, "tanganke/eurosat", repo)
    with pytest.raises(NeuligError, match="torchvision EuroSAT files"):
        load_real_dataset("eurosat", tmp_path / "data", 16, source="torchvision")


def test_fetched_through_the_hub_protocol_once_then_read_from_the_cache(tmp_path, monkeypatch, empty_hub_cache):
    from tests.hub_server import HubServer, go_online

    write_parquet_dataset(tmp_path / "served", "tanganke/dtd", DTD, {"train": 30, "test": 10})
    with HubServer(tmp_path / "served") as server:
        go_online(monkeypatch, server, empty_hub_cache)
        first = load_real_dataset("dtd", tmp_path / "data", 16, download=True)
        fetched = [p for p in server.downloads() if p.startswith("/datasets/tanganke/dtd/")]
        assert sorted(p.rsplit("/", 1)[-1] for p in fetched) == [
            "README.md", "test-00000-of-00001.parquet", "train-00000-of-00001.parquet"]
        assert "hub tanganke/dtd (fetched)" in first.split_note and first.origin == "hub:tanganke/dtd"
        before = len(server.requests)
        again = load_real_dataset("dtd", tmp_path / "data", 16, download=True)
        assert len(server.requests) == before, "a complete cached copy is read without any request"
        assert torch.equal(first.test.labels, again.test.labels) and "(cached)" in again.split_note
        assert not (tmp_path / "data").exists(), "the hub cache is used as it is, nothing copied to data.root"


def test_a_dropped_connection_publishes_no_shard_and_the_next_run_completes(tmp_path, monkeypatch, empty_hub_cache):
    from tests.hub_server import HubServer, go_online

    write_parquet_dataset(tmp_path / "served", "tanganke/dtd", DTD, {"train": 60, "test": 10})
    with HubServer(tmp_path / "served") as server:
        go_online(monkeypatch, server, empty_hub_cache)
        server.drop("data/train-00000-of-00001.parquet", 500)
        with pytest.raises(NeuligError) as info:
            load_real_dataset("dtd", tmp_path / "data", 16, download=True)
        assert "fetching it from tanganke/dtd failed" in str(info.value) and "\n" not in str(info.value)
        assert cached_copy("tanganke/dtd") is None
        assert not list(empty_hub_cache.glob("datasets--tanganke--dtd/snapshots/*/data/train-*"))
        server.drop(None)
        data = load_real_dataset("dtd", tmp_path / "data", 16, download=True)
        assert len(data.train) + len(data.val) == 60
