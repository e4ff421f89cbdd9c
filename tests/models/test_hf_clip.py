"""Hugging Face CLIP folders convert to open_clip with the same embeddings, and exported merges load
with transformers and give our model's embeddings. Every model is randomly initialised."""
from __future__ import annotations

import json

import pytest
import torch

from neulig.errors import NeuligError
from neulig.models.hf_clip import hf_to_open_clip, load_hf_clip, read_hf_weights
from neulig.models.hf_export import save_hf_clip

transformers = pytest.importorskip("transformers")

ARCH = "neulig-tiny"
SMALL_VISION = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
                "image_size": 32, "patch_size": 8, "projection_dim": 16}
SMALL_TEXT = {"hidden_size": 32, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
              "max_position_embeddings": 16}
ATOL = 1e-5


def _open_clip(arch: str, state: dict):
    """open_clip's model for ``arch`` holding ``state``: a bare image tower is loaded into a model built
    on the meta device (no random init of ViT-B/32), a full CLIP strictly into a real one."""
    import open_clip

    if not all(k.startswith("visual.") for k in state):
        model = open_clip.create_model(arch)
        model.load_state_dict(state, strict=True)
        return model.eval()
    with torch.device("meta"):
        model = open_clip.create_model(arch, device="meta")
    model.visual.load_state_dict({k[len("visual."):]: v for k, v in state.items()}, strict=True, assign=True)
    return model.eval()


def _hf_image_embeds(model, pixels: torch.Tensor) -> torch.Tensor:
    return model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)


def _hf_text_embeds(model, ids: torch.Tensor) -> torch.Tensor:
    return model.text_projection(model.text_model(input_ids=ids).pooler_output)


HUB_SIZES = {  # the hub's openai/clip-vit-* configs (transformers' defaults are ViT-B/32)
    "ViT-B-32": ({}, {}, 512),
    "ViT-B-16": ({"patch_size": 16}, {}, 512),
    "ViT-L-14": ({"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
                  "patch_size": 14}, {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12}, 768),
}


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
@pytest.mark.parametrize("size", list(HUB_SIZES))
def test_hub_sizes_map_to_the_registered_architectures(size, act):
    """Shapes only (a CLIPModel on the meta device): quick_gelu gives the OpenAI ``-quickgelu`` variant."""
    from neulig.models.hf_clip import arch_for

    vision, text, dim = HUB_SIZES[size]
    config = transformers.CLIPConfig(vision_config={**vision, "hidden_act": act}, projection_dim=dim,
                                     text_config={**text, "hidden_act": act})
    with torch.device("meta"):
        hf = transformers.CLIPModel(config)
    _, cfg, has_text = hf_to_open_clip(hf.state_dict(), config.to_dict())
    expected = size + ("-quickgelu" if act == "quick_gelu" else "")
    assert has_text and arch_for(cfg, True) == expected and arch_for(cfg, False) == expected


@pytest.mark.parametrize(("sizes", "act", "arch"), [
    (SMALL_VISION, "gelu", None), (SMALL_VISION, "quick_gelu", None),
    pytest.param({}, "quick_gelu", "ViT-B-32-quickgelu", marks=pytest.mark.slow),  # ViT-B/32 sizes: ~5-10 s
    pytest.param({}, "gelu", "ViT-B-32", marks=pytest.mark.slow),
])
def test_vision_tower_gives_the_same_image_embeddings(sizes, act, arch):
    torch.manual_seed(0)
    config = transformers.CLIPVisionConfig(hidden_act=act, **sizes)
    hf = transformers.CLIPVisionModelWithProjection(config).eval()
    state, cfg, has_text = hf_to_open_clip(hf.state_dict(), config.to_dict())
    assert not has_text and cfg["quick_gelu"] == (act == "quick_gelu")
    from neulig.models.hf_clip import arch_for

    name = arch_for(cfg, has_text)
    assert name == arch if arch else name.startswith("hf-clip-")
    pixels = torch.randn(1 if not sizes else 3, 3, config.image_size, config.image_size)
    with torch.no_grad():
        ours, theirs = _open_clip(name, state).encode_image(pixels), hf(pixel_values=pixels).image_embeds
    assert theirs.abs().max() > 0.1
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)


@pytest.mark.parametrize("eos", [2, 49407, 400])  # legacy argmax pooling, first-EOS pooling, an unusual EOS id
def test_clip_model_gives_the_same_text_and_image_embeddings(tmp_path, eos):
    import open_clip

    torch.manual_seed(1)
    config = transformers.CLIPConfig(text_config={**SMALL_TEXT, "eos_token_id": eos, "hidden_act": "gelu"},
                                     vision_config={**SMALL_VISION, "hidden_act": "gelu"}, projection_dim=16)
    hf = transformers.CLIPModel(config).eval()
    hf.save_pretrained(tmp_path / "clip")
    converted = load_hf_clip(tmp_path / "clip")
    assert converted.has_text and converted.config["text_cfg"].get("pool_type", "argmax") == (
        "eos" if eos == 400 else "argmax")
    ids = open_clip.tokenize(["a photo of a cat", "a diagram"], context_length=16)  # [SOT, ..., EOT=49407, 0...]
    if eos == 400:
        ids[ids == 49407] = 400  # this model's EOS; argmax pooling would pick SOT instead
    pixels = torch.randn(2, 3, 32, 32)
    model = _open_clip(converted.arch, converted.state)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(ids), _hf_text_embeds(hf, ids), atol=ATOL, rtol=0)
        torch.testing.assert_close(model.encode_image(pixels), _hf_image_embeds(hf, pixels), atol=ATOL, rtol=0)
    assert torch.equal(model.logit_scale, hf.logit_scale)


@pytest.mark.parametrize("saved_by", ["transformers5", "transformers4"])
def test_vision_model_without_projection_takes_the_base_projection(tmp_path, saved_by):
    """FusionBench's experts: CLIPVisionModel folders, whose keys transformers 4 wrote under
    ``vision_model.`` and transformers 5 writes without it."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(2)
    hf = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(hidden_act="gelu", **SMALL_VISION)).eval()
    hf.save_pretrained(tmp_path / "expert")
    if saved_by == "transformers4":
        weights = tmp_path / "expert" / "model.safetensors"
        state = {k if k.startswith("vision_model.") else f"vision_model.{k}": v for k, v in load_file(weights).items()}
        save_file(state, str(weights), metadata={"format": "pt"})
    with pytest.raises(NeuligError, match=r"is a CLIPVisionModel without visual_projection; pass the") as err:
        load_hf_clip(tmp_path / "expert")
    assert "\n" not in str(err.value)
    projection = torch.randn(64, 16)
    converted = load_hf_clip(tmp_path / "expert", projection=projection)
    assert torch.equal(converted.visual()["proj"], projection)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = hf(pixel_values=pixels).pooler_output @ projection
        torch.testing.assert_close(_open_clip(converted.arch, converted.state).encode_image(pixels), expected,
                                   atol=ATOL, rtol=0)
    with pytest.raises(NeuligError, match=r"projection of shape \(63, 16\) does not fit width 64"):
        load_hf_clip(tmp_path / "expert", projection=torch.randn(63, 16))


def test_exported_image_tower_loads_with_transformers(tmp_path, make_clip):
    model = make_clip(seed=4)
    folder = tmp_path / "merged-hf"
    assert save_hf_clip(folder, model.state_dict(), ARCH) == folder
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    hf = transformers.CLIPVisionModelWithProjection.from_pretrained(folder).eval()
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=pixels).image_embeds, model.encode_image(pixels), atol=ATOL, rtol=0)
    back = load_hf_clip(folder)
    assert back.arch == ARCH and not back.has_text
    visual = model.visual.state_dict()
    assert back.visual().keys() == visual.keys() and all(torch.equal(back.visual()[k], v) for k, v in visual.items())


def test_exported_clip_model_loads_with_transformers_and_round_trips(tmp_path, make_clip):
    import open_clip

    model = make_clip(seed=5)
    folder = save_hf_clip(tmp_path / "merged-hf", model.state_dict(), ARCH, text=True)
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["CLIPModel"]
    hf = transformers.CLIPModel.from_pretrained(folder).eval()
    ids = open_clip.get_tokenizer(ARCH)(["a photo of a dog", "two"])
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(_hf_text_embeds(hf, ids), model.encode_text(ids), atol=ATOL, rtol=0)
        torch.testing.assert_close(_hf_image_embeds(hf, pixels), model.encode_image(pixels), atol=ATOL, rtol=0)
    back = load_hf_clip(folder)
    state = model.state_dict()
    assert back.arch == ARCH and back.has_text and back.state.keys() == state.keys()
    assert all(torch.equal(back.state[k], v) for k, v in state.items())


def test_export_replaces_an_existing_folder_and_leaves_no_temporary_files(tmp_path, make_clip):
    first, second = make_clip(seed=6), make_clip(seed=7)
    folder = tmp_path / "out" / "merged-hf"
    save_hf_clip(folder, first.state_dict(), ARCH)
    save_hf_clip(folder, second.state_dict(), ARCH)
    assert [p.name for p in folder.parent.iterdir()] == ["merged-hf"]
    assert torch.equal(load_hf_clip(folder).visual()["proj"], second.visual.proj)


def test_sharded_and_bin_weights_read_as_the_single_file(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(3)
    hf = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**SMALL_VISION))
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    keys = list(state)
    sharded, binary = tmp_path / "sharded", tmp_path / "binary"
    for folder in (sharded, binary):
        folder.mkdir()
        (folder / "config.json").write_text(hf.config.to_json_string())
    halves = {"model-00001-of-00002.safetensors": keys[:10], "model-00002-of-00002.safetensors": keys[10:]}
    for name, part in halves.items():
        save_file({k: state[k] for k in part}, str(sharded / name))
    index = {"weight_map": {k: name for name, part in halves.items() for k in part}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    torch.save(state, binary / "pytorch_model.bin")
    for folder in (sharded, binary):
        read = read_hf_weights(folder)
        assert read.keys() == state.keys() and all(torch.equal(read[k], v) for k, v in state.items())
    index["weight_map"][keys[0]] = "../elsewhere.safetensors"
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(NeuligError, match=r"names shard '\.\./elsewhere\.safetensors' outside its folder"):
        read_hf_weights(sharded)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda c: c.update(model_type="bert"), r"has model_type 'bert'; only CLIP folders"),
    (lambda c: c.update(hidden_act="relu"), r"uses hidden_act 'relu'; open_clip CLIP towers use quick_gelu or gelu"),
    (lambda c: c.update(num_attention_heads=5), r"hidden_size 96 is not divisible by num_attention_heads 5"),
])
def test_config_problems_are_one_line(tmp_path, make_clip, edit, message):
    folder = save_hf_clip(tmp_path / "hf", make_clip().state_dict(), ARCH)
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(NeuligError, match=message) as err:
        load_hf_clip(folder)
    assert "\n" not in str(err.value)


def test_missing_config_or_weights_and_unexportable_archs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(NeuligError, match=r"has no config\.json; give a Hugging Face CLIP folder"):
        load_hf_clip(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text(json.dumps({"model_type": "clip_vision_model"}))
    with pytest.raises(NeuligError, match=r"has config\.json but no model\.safetensors or pytorch_model\.bin"):
        load_hf_clip(tmp_path / "empty")
    with pytest.raises(NeuligError, match=r"RN50 is not a ViT with square images"):
        save_hf_clip(tmp_path / "rn50", {}, "RN50")
    assert not (tmp_path / "rn50").exists()


def test_bin_shards_share_one_byte_budget(tmp_path):
    from neulig.models.read_limits import Limits

    halves = {"pytorch_model-00001-of-00002.bin": {"a": torch.ones(4096)},
              "pytorch_model-00002-of-00002.bin": {"b": torch.ones(4096)}}  # 16 KiB each
    for name, part in halves.items():
        torch.save(part, tmp_path / name)
    index = {"weight_map": {k: name for name, part in halves.items() for k in part}}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    assert set(read_hf_weights(tmp_path, Limits(max_bytes=40_000))) == {"a", "b"}
    with pytest.raises(NeuligError, match=r"00002-of-00002\.bin breaks a reading limit: .* more than 7,616 bytes"):
        read_hf_weights(tmp_path, Limits(max_bytes=24_000))  # each shard fits alone, not both
