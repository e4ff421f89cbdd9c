"""Datasets from the hub's dataset repositories: FusionBench's image-classification repositories, read
from their parquet files with pyarrow (no ``datasets`` library).

A repository holds ``README.md`` (its card: the ``configs`` say which files make each split, the
``dataset_info`` features name the classes) and ``data/<split>-<k>-of-<n>.parquet`` shards with an
``image`` column (a struct whose ``bytes`` are the encoded image) and an integer ``label`` column.
neulig reads the ``train`` and ``test`` splits; its own protocol (validation carved from train, capped,
:mod:`neulig.data.real`) is applied on top, exactly as for torchvision's files.

Where the files are looked for, in order:

1. ``<data.root>/<name>/`` holding that layout (a copy of the repository, e.g. made with
   ``hf download <repo> --repo-type dataset --local-dir <data.root>/<name>``);
2. the huggingface_hub cache as it is (``HF_HUB_CACHE``, by default ``~/.cache/huggingface/hub``), so
   repositories a FusionBench user already holds are not fetched again, and a complete cached copy makes
   no request at all;
3. fetched into that cache with ``snapshot_download`` when ``data.download`` allows it and
   ``HF_HUB_OFFLINE`` is not set. huggingface_hub writes each file under a temporary name and renames it
   when complete, so an interrupted fetch publishes no partial file and the next run completes it.

A copy counts only when it is complete: every shard ``k`` of ``n`` of both splits is present.
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

# neulig's dataset name -> FusionBench's repository (repo_type="dataset")
HUB_REPOS: dict[str, str] = {
    "sun397": "tanganke/sun397",
    "cars": "tanganke/stanford_cars",
    "resisc45": "tanganke/resisc45",
    "eurosat": "tanganke/eurosat",
    "dtd": "tanganke/dtd",
    "gtsrb": "tanganke/gtsrb",
    "svhn": "tanganke/svhn",
    "mnist": "tanganke/mnist",
    "cifar10": "tanganke/cifar10",
    "cifar100": "tanganke/cifar100",
    "stl10": "tanganke/stl10",
}
HUB_SPLITS = ("train", "test")
CARD = "README.md"
SHARD = re.compile(r"-(\d+)-of-(\d+)\.parquet$")


def split_patterns(card: dict) -> dict[str, str]:
    """{split: glob of its files} from a card's ``configs`` (the default one), or ``data/<split>-*``."""
    patterns = {split: f"data/{split}-*" for split in HUB_SPLITS}
    configs = card.get("configs") or []
    chosen = next((c for c in configs if c.get("config_name") == "default"), configs[0] if configs else None)
    for entry in (chosen or {}).get("data_files") or []:
        if isinstance(entry, dict) and entry.get("split") in patterns:
            path = entry.get("path")
            patterns[entry["split"]] = path[0] if isinstance(path, list) else str(path)
    return patterns


def read_card(folder: Path) -> dict:
    """The YAML front matter of ``folder/README.md`` ({} when there is none)."""
    import yaml

    path = folder / CARD
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return {}
    try:
        front = yaml.safe_load(text.split("---", 2)[1])
    except (yaml.YAMLError, IndexError):
        return {}
    return front if isinstance(front, dict) else {}


def card_classnames(card: dict) -> list[str] | None:
    """The ``label`` feature's class names, in label order, from a card's ``dataset_info``."""
    info = card.get("dataset_info")
    if isinstance(info, list):
        info = next((i for i in info if i.get("config_name", "default") == "default"), info[0] if info else None)
    for feature in (info or {}).get("features") or []:
        names = ((feature.get("dtype") or {}).get("class_label") or {}).get("names") if isinstance(
            feature.get("dtype"), dict) else None
        if feature.get("name") == "label" and names:
            if isinstance(names, dict):
                return [str(names[k]) for k in sorted(names, key=lambda k: int(k))]
            return [str(n) for n in names]
    return None


def split_files(folder: Path) -> dict[str, list[Path]] | None:
    """{split: its parquet files} when ``folder`` holds a complete copy of both splits, else None."""
    patterns = split_patterns(read_card(folder))
    out = {}
    for split, pattern in patterns.items():
        files = sorted(folder.glob(pattern))
        files = [f for f in files if f.suffix == ".parquet" and f.is_file()]
        if not files or not shards_complete(files):
            return None
        out[split] = files
    return out


def shards_complete(files: list[Path]) -> bool:
    """Every shard ``k`` of ``n`` present (files not named as shards count as complete)."""
    shards = [SHARD.search(f.name) for f in files]
    counts = {int(m.group(2)) for m in shards if m}
    if not counts:
        return True
    return len(counts) == 1 and {int(m.group(1)) for m in shards if m} == set(range(counts.pop()))


@dataclass(frozen=True)
class HubCopy:
    """A complete copy of a repository: its folder, its split files and the card's class names."""

    folder: Path
    files: dict[str, list[Path]]
    classnames: list[str] | None
    provenance: str


def local_copy(folder: Path, provenance: str) -> HubCopy | None:
    files = split_files(folder) if folder.is_dir() else None
    if files is None:
        return None
    return HubCopy(folder, files, card_classnames(read_card(folder)), provenance)


def cached_copy(repo_id: str) -> HubCopy | None:
    """The complete copy of ``repo_id`` in the huggingface_hub cache, without any request."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = snapshot_download(repo_id, repo_type="dataset", local_files_only=True)
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None
    return local_copy(Path(folder), f"hub {repo_id} (cached)")


def fetch_copy(repo_id: str) -> HubCopy:
    """Fetch the card, then the train and test files of ``repo_id`` into the huggingface_hub cache."""
    from huggingface_hub import hf_hub_download, snapshot_download

    card = Path(hf_hub_download(repo_id, CARD, repo_type="dataset"))
    patterns = [CARD, *split_patterns(read_card(card.parent)).values()]
    folder = Path(snapshot_download(repo_id, repo_type="dataset", allow_patterns=patterns))
    copy = local_copy(folder, f"hub {repo_id} (fetched)")
    if copy is None:
        raise FileNotFoundError(f"{repo_id} has no complete train and test parquet files")
    return copy


class ParquetImages:
    """One split's images and labels from parquet shards: the encoded bytes are read once into memory
    (arrow buffers, shared with forked DataLoader workers), decoded per item with PIL."""

    def __init__(self, files: list[Path], transform: Callable, label_map: np.ndarray | None = None):
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        chunks, labels = [], []
        for path in files:
            table = pq.read_table(path, columns=["image", "label"])
            image = table.column("image")
            for chunk in (image.chunks if hasattr(image, "chunks") else [image]):
                chunks.append(pc.struct_field(chunk, "bytes") if str(chunk.type).startswith("struct") else chunk)
            labels.append(np.asarray(table.column("label").to_numpy(), dtype=np.int64))
        self._chunks = chunks
        self._starts = np.cumsum([0] + [len(c) for c in chunks])
        raw = np.concatenate(labels) if labels else np.zeros(0, np.int64)
        self.targets = label_map[raw] if label_map is not None else raw
        self.transform = transform

    def __len__(self) -> int:
        return int(self._starts[-1])

    def encoded(self, i: int) -> bytes:
        k = int(np.searchsorted(self._starts, i, side="right")) - 1
        value = self._chunks[k][i - int(self._starts[k])].as_py()
        if value is None:
            raise ValueError(f"image {i} has no bytes")
        return value

    def __getitem__(self, i: int):
        from PIL import Image

        image = Image.open(io.BytesIO(self.encoded(i)))
        image.load()
        return self.transform(image), int(self.targets[i])
