"""Where each real dataset comes from, whether its files are complete, and how a run gets them.

Two sources (``data.source``): ``torchvision`` (its dataset classes, reading or downloading their files
under ``<data.root>/<name>``; RESISC45 is an image folder) and ``hub`` (FusionBench's dataset
repositories, :mod:`neulig.data.hub`). ``auto`` takes whatever is already there (files under
``<data.root>/<name>`` of either kind, then the huggingface_hub cache), and otherwise fetches from the
hub, or with torchvision where the hub has no repository. Fetching needs ``data.download=true`` (the
default) and no ``HF_HUB_OFFLINE=1`` (which neulig honours for torchvision's downloads too).

Nothing here imports torch: the preflight (:mod:`neulig.data.preflight`) uses it before any work.
A folder counts only when it is complete (every ``markers`` path present), never by mere existence, so
the folder a failed torchvision download leaves behind does not pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neulig.data.hub import HUB_REPOS, HubCopy, cached_copy, local_copy
from neulig.errors import first_line
from neulig.models.hub import fetching_allowed, why_not_fetched


@dataclass(frozen=True)
class Source:
    """A dataset's torchvision class with its per-split keyword arguments, and the paths under
    ``<data.root>/<name>`` that must all exist for its files to count as complete.

    ``test`` / ``val`` are None where there is no official split of that kind; ``files`` says what must
    lie there (for messages); ``downloadable`` is False where torchvision's download is gone.
    """

    torchvision_class: str
    files: str
    markers: tuple[str, ...]
    train: dict[str, Any]
    test: dict[str, Any] | None = None
    val: dict[str, Any] | None = None
    downloadable: bool = True


def _mnist_markers() -> tuple[str, ...]:
    return tuple(f"MNIST/raw/{p}-{k}" for p in ("train", "t10k") for k in ("images-idx3-ubyte", "labels-idx1-ubyte"))


SOURCES: dict[str, Source] = {
    "gtsrb": Source("GTSRB", "gtsrb/GTSRB/Training/, gtsrb/GTSRB/Final_Test/Images/, gtsrb/GT-final_test.csv",
                    ("gtsrb/GTSRB/Training", "gtsrb/GTSRB/Final_Test/Images", "gtsrb/GT-final_test.csv"),
                    {"split": "train"}, {"split": "test"}),
    "cifar10": Source("CIFAR10", "cifar-10-batches-py/",
                      ("cifar-10-batches-py/data_batch_5", "cifar-10-batches-py/test_batch",
                       "cifar-10-batches-py/batches.meta"), {"train": True}, {"train": False}),
    "cifar100": Source("CIFAR100", "cifar-100-python/",
                       ("cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"),
                       {"train": True}, {"train": False}),
    "mnist": Source("MNIST", "MNIST/raw/ with the four *-idx?-ubyte files", _mnist_markers(),
                    {"train": True}, {"train": False}),
    "stl10": Source("STL10", "stl10_binary/",
                    tuple(f"stl10_binary/{f}" for f in ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin")),
                    {"split": "train"}, {"split": "test"}),
    "svhn": Source("SVHN", "train_32x32.mat, test_32x32.mat", ("train_32x32.mat", "test_32x32.mat"),
                   {"split": "train"}, {"split": "test"}),
    "sun397": Source("SUN397", "SUN397/ with ClassName.txt and the image folders", ("SUN397/ClassName.txt",),
                     {}, downloadable=False),
    "cars": Source("StanfordCars", "stanford_cars/ with devkit/, cars_train/, cars_test/, "
                   "cars_test_annos_withlabels.mat",
                   ("stanford_cars/devkit", "stanford_cars/cars_train", "stanford_cars/cars_test",
                    "stanford_cars/cars_test_annos_withlabels.mat"),
                   {"split": "train"}, {"split": "test"}, downloadable=False),
    "dtd": Source("DTD", "dtd/dtd/ with images/ and labels/", ("dtd/dtd/images", "dtd/dtd/labels/test1.txt"),
                  {"split": "train"}, {"split": "test"}, {"split": "val"}),
    "eurosat": Source("EuroSAT", "eurosat/2750/<class>/*.jpg", ("eurosat/2750",), {}),
    "resisc45": Source("ImageFolder", "<class>/*.jpg, one folder per class (45), optionally the "
                       "resisc45-{train,val,test}.txt split lists", (), {}, downloadable=False),
}
RESISC45_CLASSES = 45


def resisc45_folder(root: Path) -> Path:
    nested = root / "NWPU-RESISC45"
    return nested if nested.is_dir() else root


def torchvision_complete(name: str, root: Path) -> bool:
    """Whether ``root`` holds every file ``name``'s torchvision source needs (RESISC45: 45 class folders)."""
    if name == "resisc45":
        folder = resisc45_folder(root)
        return folder.is_dir() and sum(1 for p in folder.iterdir() if p.is_dir()) >= RESISC45_CLASSES
    return root.is_dir() and all((root / marker).exists() for marker in SOURCES[name].markers)


@dataclass(frozen=True)
class Plan:
    """How a run gets a dataset: ``kind`` is ``torchvision`` (files under ``root``, fetched first when
    ``fetch``) or ``hub`` (``copy`` when one is already complete, else fetched from ``repo``)."""

    kind: str
    fetch: bool
    repo: str | None = None
    copy: HubCopy | None = None


def plan(name: str, root: Path, source: str, download: bool) -> Plan | None:
    """The first way to get ``name``: files already there, then a fetch; None when none is possible."""
    repo = HUB_REPOS.get(name)
    hub_ok, tv_ok = source in ("auto", "hub") and repo is not None, source in ("auto", "torchvision")
    if hub_ok:
        copy = local_copy(root, f"a copy of hub {repo} in {root}")
        if copy is not None:
            return Plan("hub", False, repo, copy)
    if tv_ok and torchvision_complete(name, root):
        return Plan("torchvision", False)
    if hub_ok:
        copy = cached_copy(repo)
        if copy is not None:
            return Plan("hub", False, repo, copy)
    if fetching_allowed(download):
        if hub_ok:
            return Plan("hub", True, repo)
        if tv_ok and SOURCES[name].downloadable:
            return Plan("torchvision", True)
    return None


def _why_not(name: str, source: str, download: bool) -> str:
    if not fetching_allowed(download):
        return why_not_fetched(download, "data.download")
    if source == "torchvision" and name in HUB_REPOS:
        gone = "no download" if name == "resisc45" else "its download is gone"
        return f"torchvision cannot fetch it ({gone}; data.source=auto or hub fetches it from the hub)"
    return "no source can fetch it"


def where_to_get(name: str, root: Path, source: str) -> str:
    """What to put under ``root`` by hand: the hub repository (with the command) and/or torchvision's files."""
    src, repo, options = SOURCES[name], HUB_REPOS.get(name), []
    if repo and source in ("auto", "hub"):
        options.append(f"a copy of the hub dataset repository {repo} "
                       f"(hf download {repo} --repo-type dataset --include README.md 'data/train-*' 'data/test-*' "
                       f"--local-dir {root})")
    if source in ("auto", "torchvision"):
        kind = "the NWPU-RESISC45 images" if name == "resisc45" else f"the torchvision {src.torchvision_class} files"
        options.append(f"{kind} ({src.files})")
    return " or ".join(options)


def missing_message(name: str, root: Path, download: bool = False, source: str = "auto") -> str:
    """One line: which dataset, why it cannot be fetched, where it comes from and where to put it."""
    return f"dataset {name} not found under {root} and {_why_not(name, source, download)}: put " \
           f"{where_to_get(name, root, source)} there"


def fetch_failed_message(name: str, root: Path, origin: str, source: str, error: BaseException) -> str:
    return (f"dataset {name}: fetching it from {origin} failed ({first_line(error)}); check the connection and run again "
            f"(nothing partial was published), or put {where_to_get(name, root, source)} under {root}")
