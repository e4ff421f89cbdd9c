"""Schema of ``conf/paths/``: every directory neulig reads or writes."""
from dataclasses import dataclass

from omegaconf import MISSING


@dataclass
class PathsConfig:
    """Relative paths are relative to where the command runs."""

    root_dir: str = MISSING
    output_dir: str = MISSING
    cache_dir: str = MISSING  # backbone, heads, experts, features (content-hash keyed)
    weights_dir: str = MISSING  # real CLIP weights: <arch>_<tag>.bin
    data_dir: str = MISSING  # real datasets, <data_dir>/<name>
