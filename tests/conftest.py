"""Shared fixtures: offline mode, tiny Hydra configs composed exactly as the CLI composes them."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

TINY_OVERRIDES = [
    "model.pretrain.steps=30",
    "model.pretrain.n_per_family=300",
    "model.pretrain.batch_size=64",
    "model.finetune.epochs=2",
    "data.sizes.train=160",
    "data.sizes.val=64",
    "data.sizes.test=96",
]
PORTLAND_TINY = ["merge.global_epochs=20", "merge.eval_every=5"]
# a whole run at its cheapest: a random-init backbone (no pretraining), two datasets, 2 steps per expert
FAST_RUN = [*TINY_OVERRIDES, "model.pretrained=null", "data.datasets=[digits,shapes]", "model.finetune.epochs=1",
            "logger=none"]


def assert_cache_clean(cache_dir: Path, allow_temp: bool = False) -> list[Path]:
    """Assert that every entry ``<cache>/<stage>/<key>/`` has a meta.json that verifies and that no
    entry lock is held by a running process; return the leftover publish temp dirs
    (``<stage>/.<key>.<owner>.<random>.tmp``), which are never trusted (a dead owner's lock is ignored:
    the next run takes it over).

    With ``allow_temp=False`` a leftover temp dir fails the assertion too. An absent cache is clean.
    """
    from neulig.utils.cache import CacheEntry, CacheError

    cache_dir = Path(cache_dir)
    temps, bad = [], []
    for stage in sorted(cache_dir.iterdir()) if cache_dir.is_dir() else []:
        if stage.name == "digests.json":  # the content-hash memo (utils.cache.content_digest), never trusted blindly
            continue
        if not stage.is_dir():
            bad.append(f"{stage}: a file where stage folders belong")
            continue
        for path in sorted(stage.iterdir()):
            if path.name.startswith(".") and path.name.endswith(".lock"):  # neulig.utils.lock: a dead owner's is
                if _held(path):                                            # taken over, a live one's is work
                    bad.append(f"{path}: a lock held by a running process")  # in progress
                continue
            if path.name.startswith(".") and path.name.endswith(".tmp"):
                temps.append(path)
                continue
            try:
                meta = CacheEntry(cache_dir, stage.name, path.name).verify()
            except CacheError as err:
                bad.append(str(err))
                continue
            if meta.get("key") != path.name:
                bad.append(f"{path}: meta.json names key {meta.get('key')!r}")
    assert not bad, "untrusted cache entries:\n" + "\n".join(bad)
    assert allow_temp or not temps, f"leftover temp dirs: {temps}"
    return temps


def _held(lock: Path) -> bool:
    from neulig.utils.cache import process_alive
    from neulig.utils.lock import read_owner, this_host

    owner = read_owner(lock)
    return owner is not None and owner.host == this_host() and owner.pid >= 0 and process_alive(owner.pid)


def compose(overrides: list[str], tmp_path: Path):
    """The CLI's config with ``overrides``, all outputs redirected under ``tmp_path``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from neulig.config import register

    register()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose("config", overrides=[f"paths.root_dir={tmp_path}", *overrides])


def execute(cfg, run_dir: Path) -> dict:
    """``neulig.run.execute`` on a composed config, as the CLI calls it."""
    from omegaconf import OmegaConf

    from neulig.config import load
    from neulig.run import execute as run_execute

    return run_execute(load(cfg), OmegaConf.to_yaml(cfg), run_dir)


@pytest.fixture
def tiny_cfg(tmp_path):
    def make(*extra: str):
        merge = next((e.split("=", 1)[1] for e in extra if e.startswith("merge=")), "portland")
        return compose([*TINY_OVERRIDES, *(PORTLAND_TINY if merge == "portland" else []), *extra], tmp_path)

    return make


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny models (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    on a shared 2-core machine OpenMP threads spin-wait more than they compute."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
