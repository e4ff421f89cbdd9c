"""Merged models as open_clip checkpoints: open_clip loads them strictly, features equal the merge's."""
from pathlib import Path

import pytest
import torch
from torch.func import functional_call

from neulig.errors import NeuligError
from neulig.merging.state_dict import StateDict
from neulig.results import ComboResult, MergedModel

ARCH = "neulig-tiny"


def assert_open_clip_checkpoint(path: Path, expected_visual: StateDict, backbone_state: StateDict) -> torch.nn.Module:
    """``path`` loads with ``open_clip.create_model(ARCH, pretrained=path)`` (strict), its text tower is the
    backbone's, and its image features equal ``expected_visual`` applied to the visual tower."""
    import open_clip

    from neulig.models.backbone import register_shipped_configs
    from neulig.models.export import load_merged

    register_shipped_configs()
    model = open_clip.create_model(ARCH, pretrained=str(path)).eval()
    state = model.state_dict()
    assert set(state) == set(backbone_state)
    for key, value in backbone_state.items():
        if not key.startswith("visual."):
            assert torch.equal(state[key], value), key
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = functional_call(model.visual, dict(expected_visual), (images,))
        assert torch.allclose(model.encode_image(images), expected, rtol=1e-5, atol=1e-6)
        assert torch.equal(load_merged(path).encode_image(images), model.encode_image(images))
    return model


@pytest.fixture(scope="module")
def clip():
    from neulig.models.backbone import create_clip

    return create_clip(ARCH, None, seed=0)


def shifted(state: StateDict, seed: int, scale: float = 0.05) -> StateDict:
    generator = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v.clone()
            for k, v in state.items()}


def test_static_merge_is_one_open_clip_checkpoint(clip, tmp_path):
    from neulig.models.export import save_merged

    merged = shifted(clip.visual.state_dict(), 1)
    written = save_merged(tmp_path, [ComboResult(("a", "b"), {}, merged=(MergedModel("merged", merged),))], clip, ARCH)
    assert written == {"merged.safetensors": tmp_path / "merged.safetensors"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged.safetensors"]  # no temporary left behind
    assert_open_clip_checkpoint(tmp_path / "merged.safetensors", merged, clip.state_dict())


def test_portland_writes_the_global_and_per_dataset_merges(clip, tmp_path):
    from neulig.merging.flat import FlatStack
    from neulig.models.export import save_merged

    experts = tuple(shifted(clip.visual.state_dict(), s) for s in (1, 2))
    merged = tuple(MergedModel(name, coefficients=beta, experts=experts) for name, beta in
                   [("merged_global", (0.7, 0.3)), ("merged_task/a", (0.9, 0.1)), ("merged_task/b", (0.2, 0.8))])
    written = save_merged(tmp_path, [ComboResult(("a", "b"), {}, merged=merged)], clip, ARCH)
    assert sorted(written) == ["merged_global.safetensors", "merged_task/a.safetensors", "merged_task/b.safetensors"]
    flat = FlatStack(list(experts))
    for name, beta in [("merged_global", [0.7, 0.3]), ("merged_task/a", [0.9, 0.1]), ("merged_task/b", [0.2, 0.8])]:
        assert_open_clip_checkpoint(tmp_path / f"{name}.safetensors", flat.combine(torch.tensor(beta)), clip.state_dict())


def test_several_combinations_get_one_folder_each(clip, tmp_path):
    from neulig.models.export import save_merged

    combos = [ComboResult(pair, {}, merged=(MergedModel("merged", shifted(clip.visual.state_dict(), i)),))
              for i, pair in enumerate([("a", "b"), ("a", "c")])]
    assert sorted(save_merged(tmp_path, combos, clip, ARCH)) == ["a+b/merged.safetensors", "a+c/merged.safetensors"]


def test_a_foreign_encoder_or_file_is_one_clear_error(clip, tmp_path):
    from safetensors.torch import save_file

    from neulig.models.export import clip_state, load_merged

    with pytest.raises(NeuligError, match=r"does not match the backbone's visual tower: key 'class_embedding' is missing"):
        clip_state(clip.state_dict(), {"proj": clip.visual.proj})
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(1)}, str(plain))
    with pytest.raises(NeuligError, match="names no open_clip architecture"):
        load_merged(plain)


def test_hf_format_writes_folders_transformers_loads(clip, tmp_path):
    """save_format=hf: one CLIPVisionModelWithProjection folder per merged model, with the merge's embeddings."""
    transformers = pytest.importorskip("transformers")
    from neulig.models.export import save_merged

    merged = shifted(clip.visual.state_dict(), 3)
    written = save_merged(tmp_path, [ComboResult(("a", "b"), {}, merged=(MergedModel("merged", merged),))], clip, ARCH,
                          fmt="hf")
    assert written == {"merged": tmp_path / "merged"} and (tmp_path / "merged" / "config.json").is_file()
    model = transformers.CLIPVisionModelWithProjection.from_pretrained(str(tmp_path / "merged")).eval()
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = functional_call(clip.visual, dict(merged), (images,))
        torch.testing.assert_close(model(pixel_values=images).image_embeds, expected, rtol=1e-5, atol=1e-5)
