"""model.experts: checkpoints in the accepted layouts load (``expert_sources.read_visual``); every misfit is one
line naming file and key."""
import pytest
import torch
from safetensors.torch import save_file

from neulig.errors import NeuligError
from neulig.models.backbone import encoder_layout
from neulig.models.expert_sources import read_visual
from neulig.models.experts import expert_files, missing_file_message

ARCH = "neulig-tiny"


@pytest.fixture(scope="module")
def layout():
    return encoder_layout(ARCH)


@pytest.fixture
def visual(layout):
    """A fake fine-tuned image encoder: distinct values per key, so a mix-up would show."""
    return {k: torch.full(v.shape, float(i), dtype=v.dtype) for i, (k, v) in enumerate(layout.items())}


def _load(path, layout):
    return read_visual(path, layout, ARCH, where=f"{path} (model.experts.digits)")


def test_layout_is_the_encoder_without_memory(layout):
    from neulig.stages.backbone import create_quietly as _quiet_create

    real = _quiet_create(ARCH, None, 0).visual.state_dict()
    assert {k: (v.shape, v.dtype) for k, v in layout.items()} == {k: (v.shape, v.dtype) for k, v in real.items()}
    assert all(v.device.type == "meta" for v in layout.values())


@pytest.mark.parametrize("wrap", ["visual", "full_clip", "state_dict", "state_dict_full_clip"])
def test_accepted_layouts_give_the_same_encoder(tmp_path, layout, visual, wrap):
    text = {"text_projection": torch.ones(3, 3), "positional_embedding": torch.ones(2)}
    full = {**{f"visual.{k}": v for k, v in visual.items()}, **text}
    content = {"visual": visual, "full_clip": full, "state_dict": {"state_dict": visual, "epoch": 3},
               "state_dict_full_clip": {"state_dict": full}}[wrap]
    path = tmp_path / "expert.pt"
    torch.save(content, path)
    loaded = _load(path, layout)
    assert list(loaded) == list(layout)
    assert all(torch.equal(loaded[k], visual[k]) for k in visual)


def test_safetensors_in_half_precision_is_cast_to_the_encoder_dtype(tmp_path, layout, visual):
    path = tmp_path / "expert.safetensors"
    save_file({k: v.half() for k, v in visual.items()}, str(path))
    loaded = _load(path, layout)
    assert all(loaded[k].dtype == layout[k].dtype and torch.equal(loaded[k], visual[k]) for k in layout)


def test_missing_key_names_it_with_the_expected_shape(tmp_path, layout, visual):
    del visual["ln_post.weight"]
    path = tmp_path / "expert.safetensors"
    save_file(visual, str(path))
    with pytest.raises(NeuligError, match=r"expert\.safetensors \(model\.experts\.digits\) does not fit the "
                                          r"neulig-tiny image encoder: key 'ln_post\.weight' is missing "
                                          r"\(expected shape \(96,\)\)"):
        _load(path, layout)


def test_unexpected_key_is_named(tmp_path, layout, visual):
    visual["head.extra"] = torch.zeros(5)
    path = tmp_path / "expert.bin"
    torch.save(visual, path)
    with pytest.raises(NeuligError, match=r"unexpected key 'head\.extra' \(shape \(5,\)\)"):
        _load(path, layout)


def test_a_pickled_module_without_the_encoder_is_one_line(tmp_path, layout):
    path = tmp_path / "expert.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, path)  # a whole module, read by the safe unpickler
    with pytest.raises(NeuligError, match=r"holds no neulig-tiny image encoder") as err:
        _load(path, layout)
    assert "\n" not in str(err.value)


def test_truncated_torch_file_is_one_line(tmp_path, layout, visual):
    path = tmp_path / "expert.pt"
    torch.save(visual, path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(NeuligError, match=r"cannot be read .*; it may be truncated") as err:
        _load(path, layout)
    assert "\n" not in str(err.value)


def test_expert_files_and_their_preflight(tmp_path):
    given = tmp_path / "a.safetensors"
    given.write_bytes(b"")
    assert expert_files({"Digits": str(given)}, ["digits", "shapes"]) == {"digits": given}
    with pytest.raises(NeuligError, match=r"names dataset 'cifar10', which is not in data\.datasets \(digits\)"):
        expert_files({"cifar10": str(given)}, ["digits"])
    assert missing_file_message({"digits": given}) is None
    assert "not found: " in missing_file_message({"digits": tmp_path / "b.safetensors"})
    assert missing_file_message({"digits": tmp_path}) is None  # a folder: a Hugging Face CLIP folder
    odd = tmp_path / "a.ckpt"
    odd.write_bytes(b"")
    assert "must be one of .safetensors, .pt, .pth, .bin, got '.ckpt'" in missing_file_message({"digits": odd})
