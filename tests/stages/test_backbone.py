"""Real open_clip architectures build randomly initialised and run a forward pass; weights load locally."""
import pytest
import torch

from neulig.errors import NeuligError
from neulig.stages.backbone import load_backbone
from tests.methods.toys import model_config


@pytest.mark.parametrize("name,arch,dim", [("rn50", "RN50", 1024), ("vit_b32", "ViT-B-32", 512)])
def test_real_architecture_random_init_forward(name, arch, dim, tmp_path):
    backbone = load_backbone(model_config(name, "model.pretrained=null"), str(tmp_path), tmp_path)
    assert backbone.feature_dim == dim
    with torch.no_grad():
        features = backbone.visual(torch.randn(2, 3, 224, 224))
    assert features.shape == (2, dim) and torch.isfinite(features).all()
    tokens = backbone.tokenizer(["a photo of a cat."])
    assert backbone.clip.encode_text(tokens).shape == (1, dim)


def test_missing_weights_is_one_line_error(tmp_path):
    with pytest.raises(NeuligError) as err:
        load_backbone(model_config("rn50"), str(tmp_path), tmp_path)
    assert "\n" not in str(err.value) and str(tmp_path / "RN50-quickgelu_openai.bin") in str(err.value)


def test_local_weights_file_is_loaded(tmp_path):
    from neulig.stages.backbone import create_quietly as _quiet_create

    source = _quiet_create("neulig-tiny", None, seed=3)
    torch.save(source.state_dict(), tmp_path / "neulig-tiny_mytag.pt")
    backbone = load_backbone(model_config("tiny", "model.pretrained=mytag"), str(tmp_path), tmp_path)
    for key, value in source.state_dict().items():
        assert torch.equal(backbone.clip.state_dict()[key], value), key


def test_missing_weights_name_the_download_option(tmp_path):
    with pytest.raises(NeuligError, match=r"model\.download=true"):
        load_backbone(model_config("tiny", "model.pretrained=mytag"), str(tmp_path), tmp_path)


def test_download_fetches_the_weights_into_the_weights_dir(tmp_path, monkeypatch):
    """model.download=true: open_clip's downloader (stubbed: no network here) fills <weights_dir>/<arch>_<tag>.bin."""
    from neulig.models.openclip import open_clip
    from neulig.stages.backbone import create_quietly

    source = create_quietly("neulig-tiny", None, seed=5)
    calls = []

    def fake_download(config, cache_dir=None):
        calls.append((config, cache_dir))
        path = tmp_path / "hub" / "open_clip_pytorch_model.bin"
        path.parent.mkdir(exist_ok=True)
        torch.save(source.state_dict(), path)
        return str(path)

    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda arch, tag: {"url": f"stub://{arch}/{tag}"})
    monkeypatch.setattr(open_clip, "download_pretrained", fake_download)
    weights = tmp_path / "weights"
    backbone = load_backbone(model_config("tiny", "model.pretrained=mytag", "model.download=true"), str(weights), tmp_path)
    assert len(calls) == 1 and calls[0][1] == str(weights / ".download")
    assert (weights / "neulig-tiny_mytag.bin").is_file()
    assert all(torch.equal(backbone.clip.state_dict()[k], v) for k, v in source.state_dict().items())
    load_backbone(model_config("tiny", "model.pretrained=mytag", "model.download=true"), str(weights), tmp_path)
    assert len(calls) == 1  # present now: not fetched again


def test_a_swapped_weights_file_of_equal_size_is_a_new_backbone(tmp_path, monkeypatch):
    """The cache key is the file's content hash (remembered by path, size and mtime), never its size."""
    import neulig.utils.cache as cache
    from neulig.stages.backbone import create_quietly

    path = tmp_path / "neulig-tiny_mytag.pt"
    torch.save(create_quietly("neulig-tiny", None, seed=1).state_dict(), path)
    hashed = []
    monkeypatch.setattr(cache, "file_sha256", lambda p, real=cache.file_sha256: hashed.append(p) or real(p))
    config = model_config("tiny", "model.pretrained=mytag")
    first = load_backbone(config, str(tmp_path), tmp_path)
    assert load_backbone(config, str(tmp_path), tmp_path).key == first.key
    assert len(hashed) == 1  # the second time the remembered digest was used
    size = path.stat().st_size
    torch.save(create_quietly("neulig-tiny", None, seed=2).state_dict(), path)
    assert path.stat().st_size == size
    assert load_backbone(config, str(tmp_path), tmp_path).key != first.key
