"""Fixtures for the expert readers: the tiny open_clip CLIP, its image-tower layout, and a throwaway
module defining the task-vectors wrappers (``ImageEncoder``, ``ImageClassifier``) whose pickles are read."""
from __future__ import annotations

import importlib
import sys
import uuid
from pathlib import Path

import pytest
import torch

ARCH = "neulig-tiny"

# The task-vectors classes (arXiv 2212.04089's src/modeling.py, trimmed). Importing the module or
# unpickling one of its objects the ordinary way leaves a marker file beside it.
WRAPPERS = '''
import pathlib

import torch

pathlib.Path(__file__).with_suffix(".imported").touch()


class ImageEncoder(torch.nn.Module):
    def __init__(self, clip, train_preprocess, val_preprocess, keep_lang=False):
        super().__init__()
        self.model, self.train_preprocess, self.val_preprocess = clip, train_preprocess, val_preprocess
        self.cache_dir = None
        if not keep_lang and hasattr(self.model, "transformer"):
            delattr(self.model, "transformer")

    def __setstate__(self, state):
        pathlib.Path(__file__).with_suffix(".setstate").touch()
        super().__setstate__(state)


class ClassificationHead(torch.nn.Linear):
    def __init__(self, normalize, weights):
        output_size, input_size = weights.shape
        super().__init__(input_size, output_size)
        self.normalize = normalize
        self.weight = torch.nn.Parameter(weights.clone())


class ImageClassifier(torch.nn.Module):
    def __init__(self, image_encoder, classification_head):
        super().__init__()
        self.image_encoder = image_encoder
        self.classification_head = classification_head
        self.train_preprocess = image_encoder.train_preprocess
        self.val_preprocess = image_encoder.val_preprocess
'''


def tiny_clip(seed: int = 0, with_transforms: bool = False):
    """A randomly initialised neulig-tiny open_clip CLIP (and its train/val transforms if asked)."""
    import open_clip

    from neulig.models.backbone import register_shipped_configs

    register_shipped_configs()
    torch.manual_seed(seed)
    model, train, val = open_clip.create_model_and_transforms(ARCH)
    model.eval()
    return (model, train, val) if with_transforms else model


class Wrappers:
    """A throwaway module with the task-vectors wrappers, importable from ``path.parent``."""

    def __init__(self, folder: Path) -> None:
        self.name = f"tv_modeling_{uuid.uuid4().hex[:8]}"
        self.path = folder / f"{self.name}.py"
        self.path.write_text(WRAPPERS)
        self.imported, self.setstate = self.path.with_suffix(".imported"), self.path.with_suffix(".setstate")
        sys.path.insert(0, str(folder))
        self.module = importlib.import_module(self.name)

    def encoder(self, seed: int = 0):
        return self.module.ImageEncoder(*tiny_clip(seed, with_transforms=True))

    def classifier(self, seed: int = 0):
        head = self.module.ClassificationHead(True, torch.randn(5, 64))
        return self.module.ImageClassifier(self.encoder(seed), head)

    def forget(self, delete_file: bool) -> None:
        """Unimport the module (and delete its file): what a reader finds on another machine."""
        sys.modules.pop(self.name, None)
        if delete_file:
            self.path.unlink()
            sys.path.remove(str(self.path.parent))
        self.imported.unlink(missing_ok=True)
        self.setstate.unlink(missing_ok=True)

    def close(self) -> None:
        sys.modules.pop(self.name, None)
        if str(self.path.parent) in sys.path:
            sys.path.remove(str(self.path.parent))


@pytest.fixture(scope="session")
def make_clip():
    """:func:`tiny_clip`: ``make_clip(seed)`` is a random neulig-tiny open_clip CLIP."""
    return tiny_clip


@pytest.fixture(scope="session")
def layout() -> dict[str, torch.Tensor]:
    """The tiny image tower's state dict as meta tensors (shapes and dtypes only)."""
    return {k: torch.empty_like(v, device="meta") for k, v in tiny_clip().visual.state_dict().items()}


@pytest.fixture
def wrappers(tmp_path):
    folder = tmp_path / "modeling"
    folder.mkdir()
    made = Wrappers(folder)
    yield made
    made.close()


@pytest.fixture(scope="module")
def clip_and_tokenizer():
    """A randomly initialised neulig-tiny CLIP and its tokenizer."""
    import open_clip

    return tiny_clip(), open_clip.get_tokenizer(ARCH)
