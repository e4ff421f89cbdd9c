"""missing_datasets: every real dataset that is absent and cannot be fetched, one line each, before any fetch."""
from __future__ import annotations

import pytest

from neulig.config.data import DataConfig
from neulig.data.preflight import missing_datasets
from neulig.data.real import REAL_SPECS
from tests.data.test_hub import hub_repo, place, put_in_hub_cache


def data_config(tmp_path, datasets, **kw) -> DataConfig:
    return DataConfig(name="test", datasets=datasets, root=str(tmp_path / "data"), **kw)


def test_offline_names_every_dataset_that_cannot_be_fetched(tmp_path, offline):
    lines = missing_datasets(data_config(tmp_path, ["sun397", "digits", "cars", "mnist"]))
    assert [line.split()[1] for line in lines] == ["sun397", "cars", "mnist"], "generated datasets never miss"
    assert all("and HF_HUB_OFFLINE=1 is set: put" in line and "\n" not in line for line in lines)
    assert "tanganke/stanford_cars --repo-type dataset --include" in lines[1]
    assert f"--local-dir {tmp_path / 'data' / 'cars'})" in lines[1]
    assert "torchvision MNIST files" in lines[2] and "tanganke/mnist" in lines[2]


def test_download_false_forbids_fetching(tmp_path, online):
    lines = missing_datasets(data_config(tmp_path, ["resisc45", "gtsrb"], download=False))
    assert len(lines) == 2 and all("and data.download=false: put" in line for line in lines)


@pytest.mark.parametrize("source", ["auto", "hub"])
def test_online_everything_can_be_fetched(tmp_path, online, source):
    assert missing_datasets(data_config(tmp_path, sorted(REAL_SPECS), source=source)) == []


def test_torchvision_alone_cannot_fetch_what_it_lost(tmp_path, online):
    """Online with data.source=torchvision: SUN397, Cars and RESISC45 are still missing, before any fetch."""
    lines = missing_datasets(data_config(tmp_path, sorted(REAL_SPECS), source="torchvision"))
    assert sorted(line.split()[1] for line in lines) == ["cars", "resisc45", "sun397"]
    assert not (tmp_path / "data").exists()


def test_files_already_there_pass_offline(tmp_path, offline, empty_hub_cache):
    dtd, eurosat = (list(REAL_SPECS[n].classnames) for n in ("dtd", "eurosat"))
    place(hub_repo(tmp_path / "a", "tanganke/dtd", dtd, {"train": 4, "test": 2}), tmp_path / "data" / "dtd")
    put_in_hub_cache(empty_hub_cache, "tanganke/eurosat", hub_repo(tmp_path / "b", "tanganke/eurosat", eurosat,
                                                                   {"train": 4, "test": 2}))
    assert missing_datasets(data_config(tmp_path, ["dtd", "eurosat"])) == []
    assert len(missing_datasets(data_config(tmp_path, ["dtd", "eurosat"], source="torchvision"))) == 2
