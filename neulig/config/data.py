"""Schema of ``conf/data/``: which datasets collaborate, how they are split and sized."""
from collections import Counter
from dataclasses import dataclass, field
from typing import List, Optional

from omegaconf import MISSING

from neulig.config.fields import ConfigError, option


@dataclass
class SplitSizes:
    """Caps per split (a seeded subset); null is the full split of a real dataset."""

    train: Optional[int] = option(None, low=1)
    val: Optional[int] = option(None, low=1)
    test: Optional[int] = option(None, low=1)


@dataclass
class DataConfig:
    name: str = MISSING
    datasets: List[str] = MISSING  # the collaborating datasets, one expert each
    num_co_models: Optional[int] = None  # k < len(datasets): every k-combination, as the paper
    split_seed: int = 0
    # a node, not null, so that `data.sizes.train=16` or `data.sizes={...}` can set it from the command line;
    # every cap null (the default) is the same as null: the full splits
    sizes: Optional[SplitSizes] = field(default_factory=SplitSizes)
    # fetch missing real datasets (the hub, or torchvision); false forbids it, as HF_HUB_OFFLINE=1 does
    download: bool = True
    # where real datasets come from: auto (files already there, else the hub, else torchvision), torchvision
    # or hub (FusionBench's dataset repositories); docs/datasets.md
    source: str = option("auto", choices=("auto", "torchvision", "hub"))
    root: str = "${paths.data_dir}"  # real datasets are read from <root>/<name>
    # DataLoader worker processes decoding real images (feature extraction, evaluation, validation);
    # in-memory generated datasets are batched in the main process
    num_workers: int = option(4, low=0)

    def __post_init__(self) -> None:
        if self.sizes is not None and (self.sizes.train, self.sizes.val, self.sizes.test) == (None, None, None):
            self.sizes = None

    @property
    def names(self) -> List[str]:
        """The datasets in lower case, the form every stage and metric uses."""
        return [d.lower() for d in self.datasets]

    def check(self, prefix: str) -> None:
        from neulig.data.catalog import GENERATED, known_names

        names = self.names
        known = known_names()
        for name in names:
            if name not in known:
                raise ConfigError(f"{prefix}datasets", self.datasets, f"known datasets only; {name!r} is not one of "
                                  f"{', '.join(known)}")
        repeated = [n for n, count in Counter(names).items() if count > 1]
        if repeated:
            raise ConfigError(f"{prefix}datasets", self.datasets, f"distinct datasets; {repeated[0]} appears twice")
        if len(names) < 2:
            raise ConfigError(f"{prefix}datasets", self.datasets,
                              "at least two datasets: merging needs two or more experts")
        if self.num_co_models is not None and not 2 <= self.num_co_models <= len(names):
            raise ConfigError(f"{prefix}num_co_models", self.num_co_models,
                              f"null or an integer in 2..{len(names)} (the {len(names)} datasets of data={self.name})")
        generated = [n for n in names if n in GENERATED]
        if generated and self.sizes is None:
            raise ConfigError(f"{prefix}sizes", None, f"train, val and test image counts: {generated[0]} is generated")
        for split in ("train", "val", "test") if generated else ():
            if getattr(self.sizes, split) is None:
                raise ConfigError(f"{prefix}sizes.{split}", None, f"an image count: {generated[0]} is generated")

