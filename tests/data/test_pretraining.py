"""The tiny backbone's pretraining corpus: generated image-caption pairs and their random styles."""
import torch

from neulig.data import procedural as proc
from neulig.data.pretraining import Stylist, corpus_captions, pretraining_corpus
from neulig.data.registry import SPECS


def test_corpus_is_deterministic_balanced_and_covers_the_task_classes():
    a, b = pretraining_corpus(60, 3), pretraining_corpus(60, 3)
    assert torch.equal(a.ink, b.ink) and torch.equal(a.labels, b.labels)
    assert a.ink.dtype == torch.uint8 and a.ink.shape == (240, 1, 32, 32)
    assert (a.concepts, a.templates) == tuple(corpus_captions())
    for task in ("digits", "mnist5k", "shapes", "textures"):
        assert set(SPECS[task].classnames) <= set(a.concepts)
    assert not torch.equal(pretraining_corpus(60, 4).ink, a.ink)
    textures = [a.concepts.index(t) for t in proc.TEXTURES]
    assert not a.warp[torch.isin(a.labels, torch.tensor(textures))].any()  # full-frame textures are never warped


def test_stylist_is_seeded_and_plain_at_zero_strength():
    corpus = pretraining_corpus(40, 0)
    styled = [Stylist(1.0)(corpus.ink, corpus.warp, torch.Generator().manual_seed(1)) for _ in range(2)]
    assert torch.equal(styled[0], styled[1]) and styled[0].shape == (160, 3, 32, 32)
    assert styled[0].min() >= 0 and styled[0].max() <= 1
    plain = Stylist(0.0)(corpus.ink, corpus.warp, torch.Generator().manual_seed(1))
    assert torch.allclose(plain, (corpus.ink.float() / 255).expand(-1, 3, -1, -1))
