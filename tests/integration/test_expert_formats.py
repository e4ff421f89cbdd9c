"""The community's experts in: a folder of experts in the task-vectors layout (pickled ImageEncoders and
a zeroshot.pt) and in FusionBench's (Hugging Face folders and their base) run the whole pipeline, and give
exactly the numbers of the same experts handed over as open_clip safetensors files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import FAST_RUN, compose, execute
from tests.models.conftest import Wrappers

DATASETS = {"digits": "Digits", "shapes": "Shapes"}  # neulig name -> a folder name of another code base
PORTLAND = ["merge=portland", "merge.global_epochs=3", "merge.eval_every=1"]


def cached_experts(root: Path) -> dict[str, dict]:
    from neulig.models.checkpoints import load_state

    cache = root / "outputs" / "cache" / "experts"
    return {json.loads((d / "meta.json").read_text())["dataset"]: load_state(d / "encoder.safetensors")
            for d in cache.iterdir() if not d.name.startswith(".")}


def backbone_clip():
    """The FAST runs' backbone: neulig-tiny, randomly initialised with model.init_seed 0."""
    from neulig.stages.backbone import create_quietly

    return create_quietly("neulig-tiny", None, 0)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Experts fine-tuned once and moved away from what fine-tuning gives (so a run that ignored them and
    fine-tuned again could not match), then given back as open_clip files: the numbers every layout must match."""
    root = tmp_path_factory.mktemp("reference")
    execute(compose(["merge=average", *FAST_RUN], root), root / "train")
    generator = torch.Generator().manual_seed(0)
    experts = {name: {k: v + 0.05 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
                      for k, v in state.items()} for name, state in cached_experts(root).items()}
    files = {}
    for name, state in experts.items():
        files[name] = root / "files" / f"{name}.safetensors"
        files[name].parent.mkdir(exist_ok=True)
        save_file(state, str(files[name]))
    given = "model.experts={" + ",".join(f"{d}:{p}" for d, p in files.items()) + "}"
    metrics = {m: execute(compose([*args, given, *FAST_RUN], root), root / m)["metrics"]
               for m, args in (("average", ["merge=average"]), ("portland", PORTLAND))}
    finetuned = execute(compose(["merge=average", *FAST_RUN], root), root / "again")["metrics"]
    assert finetuned["acc/finetuned/avg"] != metrics["average"]["acc/finetuned/avg"]  # the files are not the cache's
    return {"root": root, "experts": experts, "metrics": metrics}


def task_vectors_dir(folder: Path, experts: dict, tmp_path: Path) -> Path:
    """<folder>/neulig-tiny/<Dataset>/finetuned.pt and zeroshot.pt, each a whole pickled ImageEncoder
    whose class is gone when the folder is read."""
    wrappers = Wrappers(tmp_path)
    model_dir = folder / "neulig-tiny"
    for name, state in [(None, None), *experts.items()]:
        encoder = wrappers.module.ImageEncoder(backbone_clip(), None, None)  # keep_lang=False drops the text tower
        if state is not None:
            encoder.model.visual.load_state_dict(state)
        path = model_dir / "zeroshot.pt" if name is None else model_dir / DATASETS[name] / "finetuned.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(encoder, path)
    wrappers.forget(delete_file=True)
    return folder


def fusionbench_dir(folder: Path, experts: dict) -> Path:
    """<folder>/clip-vit-tiny (a CLIPModel folder) and <folder>/clip-vit-tiny_<dataset> (vision folders)."""
    from neulig.models.hf_export import save_hf_clip

    clip = backbone_clip()
    save_hf_clip(folder / "clip-vit-tiny", clip.state_dict(), "neulig-tiny", text=True)
    for name, state in experts.items():
        clip.visual.load_state_dict(state)
        save_hf_clip(folder / f"clip-vit-tiny_{DATASETS[name].split()[-1].lower()}", clip.state_dict(), "neulig-tiny")
    return folder


@pytest.mark.parametrize("layout", ["task_vectors", "fusionbench"])
def test_experts_dir_gives_the_numbers_of_open_clip_files(layout, reference, tmp_path):
    experts = reference["experts"]
    folder = task_vectors_dir(tmp_path / "tv", experts, tmp_path) if layout == "task_vectors" else \
        fusionbench_dir(tmp_path / "fb", experts)
    root = reference["root"]
    for method, args in (("average", ["merge=average"]), ("portland", PORTLAND)):
        record = execute(compose([*args, f"model.experts_dir={folder}", *FAST_RUN], root), tmp_path / method)
        assert record["metrics"] == reference["metrics"][method], (layout, method)
