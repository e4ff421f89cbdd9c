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


def test_missing_weights_offline_is_one_line_naming_file_repository_and_place(tmp_path):
    """The suite runs with HF_HUB_OFFLINE=1: nothing may be fetched, so the line says what to put where."""
    with pytest.raises(NeuligError) as err:
        load_backbone(model_config("rn50"), str(tmp_path), tmp_path)
    message = str(err.value)
    assert "\n" not in message and "HF_HUB_OFFLINE=1" in message
    assert "open_clip_model.safetensors of hub repository timm/resnet50_clip.openai" in message
    assert str(tmp_path / "RN50-quickgelu_openai.safetensors") in message
    assert not list(tmp_path.iterdir())  # nothing written


def test_local_weights_file_is_loaded(tmp_path):
    from neulig.stages.backbone import create_quietly as _quiet_create

    source = _quiet_create("neulig-tiny", None, seed=3)
    torch.save(source.state_dict(), tmp_path / "neulig-tiny_mytag.pt")
    backbone = load_backbone(model_config("tiny", "model.pretrained=mytag"), str(tmp_path), tmp_path)
    for key, value in source.state_dict().items():
        assert torch.equal(backbone.clip.state_dict()[key], value), key


def test_weights_without_a_hub_source_say_so(tmp_path):
    with pytest.raises(NeuligError, match=r"open_clip knows no hub source for them: put an open_clip state dict at "):
        load_backbone(model_config("tiny", "model.pretrained=mytag"), str(tmp_path), tmp_path)


def test_missing_weights_are_fetched_by_default_through_the_hub(tmp_path, monkeypatch):
    """model.download defaults to true: the real client fetches the file from a loopback hub once."""
    from safetensors.torch import save_file

    from neulig.models import weights
    from neulig.stages.backbone import create_quietly
    from tests.hub_server import HubServer, go_online

    source = create_quietly("neulig-tiny", None, seed=5)
    repo = tmp_path / "hub" / "models" / "timm" / "tiny"
    repo.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(repo / weights.SAFE_WEIGHTS))
    monkeypatch.setattr(weights, "weights_source", lambda arch, tag: weights.WeightsSource("timm/tiny",
                                                                                            (weights.SAFE_WEIGHTS,)))
    with HubServer(tmp_path / "hub") as server:
        go_online(monkeypatch, server, tmp_path / "hf_cache")
        config = model_config("tiny", "model.pretrained=mytag")
        backbone = load_backbone(config, str(tmp_path / "weights"), tmp_path)
        assert (tmp_path / "weights" / "neulig-tiny_mytag.safetensors").is_file()
        assert all(torch.equal(backbone.clip.state_dict()[k], v) for k, v in source.state_dict().items())
        assert load_backbone(config, str(tmp_path / "weights"), tmp_path).key == backbone.key
    assert len(server.downloads()) == 1  # present now: not fetched again
    with pytest.raises(NeuligError, match=r"not found and model.download=false"):
        load_backbone(model_config("tiny", "model.pretrained=other", "model.download=false"), str(tmp_path), tmp_path)


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
