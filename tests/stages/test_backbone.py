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
    assert "\n" not in str(err.value) and str(tmp_path / "RN50_openai.bin") in str(err.value)


def test_local_weights_file_is_loaded(tmp_path):
    from neulig.stages.backbone import create_quietly as _quiet_create

    source = _quiet_create("neulig-tiny", None, seed=3)
    torch.save(source.state_dict(), tmp_path / "neulig-tiny_mytag.pt")
    backbone = load_backbone(model_config("tiny", "model.pretrained=mytag"), str(tmp_path), tmp_path)
    for key, value in source.state_dict().items():
        assert torch.equal(backbone.clip.state_dict()[key], value), key
