"""One reader for every expert format, and the task-vectors and FusionBench folder layouts."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from neulig.errors import NeuligError
from neulig.models.expert_sources import dataset_name, discover_experts, read_visual, source_format
from neulig.models.hf_export import save_hf_clip

ARCH = "neulig-tiny"
TA8_FOLDERS = {"SUN397": "sun397", "Cars": "cars", "RESISC45": "resisc45", "EuroSAT": "eurosat", "SVHN": "svhn",
               "GTSRB": "gtsrb", "MNIST": "mnist", "DTD": "dtd"}
FUSIONBENCH = {"sun397": "sun397", "stanford-cars": "cars", "resisc45": "resisc45", "eurosat": "eurosat",
               "svhn": "svhn", "gtsrb": "gtsrb", "mnist": "mnist", "dtd": "dtd", "cifar10": "cifar10",
               "cifar100": "cifar100", "stl10": "stl10"}


@pytest.fixture(scope="module")
def clip(make_clip):
    return make_clip(seed=11)


@pytest.fixture(scope="module")
def visual(clip):
    return {k: v.detach().clone() for k, v in clip.visual.state_dict().items()}


def _assert_same(got: dict, expected: dict) -> None:
    assert list(got) == list(expected) and all(torch.equal(got[k], v) for k, v in expected.items())


def test_dataset_names_come_from_one_table():
    names = {"SUN397": "sun397", "sun397": "sun397", "RESISC45": "resisc45", "Cars": "cars", "stanford_cars": "cars",
             "stanford-cars": "cars", "cars": "cars", "DTD": "dtd", "EuroSAT": "eurosat", "GTSRB": "gtsrb",
             "MNIST": "mnist", "SVHN": "svhn", "CIFAR10": "cifar10", "CIFAR100": "cifar100", "STL10": "stl10",
             "SUN397Val": "sun397", "Digits": "digits"}
    assert {name: dataset_name(name) for name in names} == names


# ---- formats ------------------------------------------------------------------------------------


def test_source_format_of_each_kind(tmp_path, clip):
    (tmp_path / "a.safetensors").write_bytes(b"")
    for suffix in (".pt", ".pth", ".bin"):
        (tmp_path / f"a{suffix}").write_bytes(b"")
    hf = save_hf_clip(tmp_path / "hf", clip.state_dict(), ARCH)
    assert source_format(tmp_path / "a.safetensors") == "safetensors"
    assert {source_format(tmp_path / f"a{s}") for s in (".pt", ".pth", ".bin")} == {"torch"}
    assert source_format(hf) == "hf"


def _odd_source(root, kind: str):
    if kind == "suffix":
        (root / "expert.ckpt").write_bytes(b"")
        return root / "expert.ckpt"
    if kind == "missing":
        return root / "missing.pt"
    (root / kind).mkdir()
    if kind == "bert":
        (root / kind / "config.json").write_text('{"model_type": "bert"}')
    return root / kind


@pytest.mark.parametrize(("kind", "message"), [
    ("suffix", r"must be a \.safetensors, \.pt, \.pth, \.bin file or a Hugging Face CLIP folder, got '\.ckpt'"),
    ("missing", r"not found; give an existing file or folder"),
    ("folder", r"is a folder without config\.json"),
    ("bert", r"config\.json has model_type 'bert'; only CLIP folders"),
])
def test_unknown_sources_are_one_line(tmp_path, kind, message):
    with pytest.raises(NeuligError, match=message) as err:
        source_format(_odd_source(tmp_path, kind))
    assert "\n" not in str(err.value)


def test_every_format_gives_the_same_image_tower(tmp_path, wrappers, layout):
    encoder = wrappers.encoder(seed=12)
    clip, visual = encoder.model, {k: v.detach().clone() for k, v in encoder.model.visual.state_dict().items()}
    paths = {"safetensors": tmp_path / "clip.safetensors", "state_dict": tmp_path / "encoder_state.pt",
             "module": tmp_path / "finetuned.pt", "hf": tmp_path / "hf-vision"}
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(paths["safetensors"]))
    torch.save(encoder.state_dict(), paths["state_dict"])  # task-vectors keys: model.visual.*
    torch.save(encoder, paths["module"])
    save_hf_clip(paths["hf"], clip.state_dict(), ARCH)
    wrappers.forget(delete_file=True)
    for path in paths.values():
        _assert_same(read_visual(path, layout, ARCH), visual)
    _assert_same(read_visual(paths["hf"] / "model.safetensors", layout, ARCH), visual)  # the file in an HF folder


def test_dtype_follows_the_layout(tmp_path, clip, layout, visual):
    path = tmp_path / "half.safetensors"
    save_file({k: v.half().contiguous() for k, v in visual.items()}, str(path))
    loaded = read_visual(path, layout, ARCH)
    assert all(loaded[k].dtype == torch.float32 for k in layout)
    assert all(torch.equal(loaded[k], visual[k].half().float()) for k in layout)


def test_fusionbench_vision_model_takes_the_base_projection(tmp_path, clip, layout, visual):
    transformers = pytest.importorskip("transformers")
    base = save_hf_clip(tmp_path / "clip-vit-tiny", clip.state_dict(), ARCH, text=True)  # a CLIPModel
    with_projection = save_hf_clip(tmp_path / "tmp", clip.state_dict(), ARCH)
    transformers.CLIPVisionModel.from_pretrained(with_projection).save_pretrained(tmp_path / "clip-vit-tiny_svhn")
    expert = tmp_path / "clip-vit-tiny_svhn"
    with pytest.raises(NeuligError, match=r"without visual_projection; pass the projection"):
        read_visual(expert, layout, ARCH)
    _assert_same(read_visual(expert, layout, ARCH, base_projection=base), visual)
    _assert_same(read_visual(expert, layout, ARCH, base_projection=visual["proj"]), visual)


def test_many_vision_experts_read_the_base_once(tmp_path, clip, layout, visual, monkeypatch):
    """stages.experts hands every expert projection_of(base): the whole base CLIP is read on first need only."""
    transformers = pytest.importorskip("transformers")
    import neulig.models.hf_clip as hf_clip
    from neulig.models.expert_sources import projection_of

    base = save_hf_clip(tmp_path / "clip-vit-tiny", clip.state_dict(), ARCH, text=True)
    transformers.CLIPVisionModel.from_pretrained(save_hf_clip(tmp_path / "tmp", clip.state_dict(), ARCH)) \
        .save_pretrained(tmp_path / "clip-vit-tiny_svhn")
    reads, read = [], hf_clip.read_hf_weights
    monkeypatch.setattr(hf_clip, "read_hf_weights", lambda path, *rest: reads.append(path.name) or read(path, *rest))
    projection = projection_of(base, layout, ARCH)
    for _ in range(3):
        _assert_same(read_visual(tmp_path / "clip-vit-tiny_svhn", layout, ARCH, base_projection=projection), visual)
    assert reads.count("clip-vit-tiny_svhn") == 3 and reads.count("clip-vit-tiny") == 1


def test_hf_folder_of_another_activation_or_size_is_refused(tmp_path, clip, layout):
    folder = save_hf_clip(tmp_path / "hf", clip.state_dict(), ARCH)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_act": "quick_gelu"}))
    with pytest.raises(NeuligError, match=r"does not fit neulig-tiny: its activation is quick_gelu but neulig-tiny "
                                          r"uses gelu"):
        read_visual(folder, layout, ARCH)
    wrong = dict(layout, proj=torch.empty(96, 8, device="meta"))
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(NeuligError, match=r"does not fit the neulig-tiny image encoder: key 'proj' has shape "
                                          r"\(96, 64\), expected \(96, 8\)"):
        from neulig.models.experts import checked_state

        checked_state(read_visual(folder, layout, ARCH), wrong, ARCH, str(folder))


def test_mismatching_file_names_the_first_key(tmp_path, layout, visual):
    path = tmp_path / "expert.safetensors"
    save_file({f"visual.{k}": v.contiguous() for k, v in visual.items() if k != "ln_pre.bias"}, str(path))
    with pytest.raises(NeuligError, match=r"under 'visual\.', key 'ln_pre\.bias' is missing \(expected shape "
                                          r"\(96,\)\)") as err:
        read_visual(path, layout, ARCH)
    assert "\n" not in str(err.value)


# ---- folder layouts -----------------------------------------------------------------------------


def _task_vectors(root, model="ViT-B-32", folders=TA8_FOLDERS):
    for folder in folders:
        (root / model / folder).mkdir(parents=True)
        (root / model / folder / "finetuned.pt").write_bytes(b"")
    (root / model / "zeroshot.pt").write_bytes(b"")
    return root / model


def _fusionbench(root, base="clip-vit-base-patch32", datasets=FUSIONBENCH):
    for folder in [base, *(f"{base}_{d}" for d in datasets)]:
        (root / folder).mkdir(parents=True)
        (root / folder / "config.json").write_text('{"model_type": "clip_vision_model"}')


def test_task_vectors_layout(tmp_path):
    model = _task_vectors(tmp_path)
    found = discover_experts(tmp_path, list(TA8_FOLDERS.values()))
    assert found.layout == "task_vectors" and found.base == model / "zeroshot.pt"
    assert found.experts == {name: model / folder / "finetuned.pt" for folder, name in TA8_FOLDERS.items()}
    assert discover_experts(model, ["cars"]).experts == {"cars": model / "Cars" / "finetuned.pt"}  # the model folder
    _task_vectors(tmp_path, "ViT-L-14", {"SVHN": "svhn"})
    with pytest.raises(NeuligError, match=r"holds several model folders \(ViT-B-32, ViT-L-14\); name the one"):
        discover_experts(tmp_path, ["svhn"])
    assert discover_experts(tmp_path, ["svhn"], model="ViT-L-14-quickgelu").experts == {
        "svhn": tmp_path / "ViT-L-14" / "SVHN" / "finetuned.pt"}


def test_fusionbench_layout(tmp_path):
    _fusionbench(tmp_path)
    found = discover_experts(tmp_path, ["sun397", "cars", "cifar100", "stl10"])
    assert found.layout == "fusionbench" and found.base == tmp_path / "clip-vit-base-patch32"
    assert found.experts == {"sun397": tmp_path / "clip-vit-base-patch32_sun397",
                             "cars": tmp_path / "clip-vit-base-patch32_stanford-cars",
                             "cifar100": tmp_path / "clip-vit-base-patch32_cifar100",
                             "stl10": tmp_path / "clip-vit-base-patch32_stl10"}


def test_missing_dataset_lists_what_was_found(tmp_path):
    _task_vectors(tmp_path / "tv", folders={"SUN397": "sun397", "Cars": "cars"})
    with pytest.raises(NeuligError, match=r"has no expert for gtsrb \(looked for .*ViT-B-32/<Dataset>/finetuned\.pt\); "
                                          r"found: Cars \(cars\), SUN397 \(sun397\)$") as err:
        discover_experts(tmp_path / "tv", ["sun397", "gtsrb"])
    assert "\n" not in str(err.value)
    _fusionbench(tmp_path / "fb", datasets=["svhn"])
    with pytest.raises(NeuligError, match=r"has no expert for dtd .*found: clip-vit-base-patch32_svhn \(svhn\)$"):
        discover_experts(tmp_path / "fb", ["dtd"])
    (tmp_path / "other" / "stuff").mkdir(parents=True)
    with pytest.raises(NeuligError, match=r"is in no known layout .*; found: stuff$"):
        discover_experts(tmp_path / "other", ["dtd"])
    with pytest.raises(NeuligError, match=r"is not a folder"):
        discover_experts(tmp_path / "absent", ["dtd"])


def test_discovered_experts_read_as_image_towers(tmp_path, wrappers, layout):
    """End to end: a task-vectors folder of pickled ImageEncoders, read by their discovered paths."""
    encoders = {"SVHN": wrappers.encoder(seed=21), "MNIST": wrappers.encoder(seed=22)}
    for folder, encoder in encoders.items():
        (tmp_path / "ViT-B-32" / folder).mkdir(parents=True)
        torch.save(encoder, tmp_path / "ViT-B-32" / folder / "finetuned.pt")
    torch.save(wrappers.encoder(seed=20), tmp_path / "ViT-B-32" / "zeroshot.pt")
    wrappers.forget(delete_file=True)
    found = discover_experts(tmp_path, ["svhn", "mnist"], model="ViT-B-32")
    for name, folder in (("svhn", "SVHN"), ("mnist", "MNIST")):
        expected = encoders[folder].model.visual.state_dict()
        _assert_same(read_visual(found.experts[name], layout, ARCH), {k: v.detach() for k, v in expected.items()})
    assert read_visual(found.base, layout, ARCH).keys() == layout.keys()
