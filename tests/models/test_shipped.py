"""The shipped pretraining: compact file round trip, recipe match, and that it is what the command makes."""
from __future__ import annotations

import math

import pytest
import torch


def test_shipped_file_round_trip_and_spec_match(clip_and_tokenizer, tmp_path):
    from neulig.models.shipped import (
        TOKEN_KEY,
        load_shipped,
        save_shipped,
        shipped_file,
        used_token_ids,
    )

    clip, tokenizer = clip_and_tokenizer
    spec = {"arch": "neulig-tiny", "pretrain": {"steps": 1, "seed": 7}, "image_size": 32, "corpus": 0}
    path = save_shipped(clip, tokenizer, spec, tmp_path / "neulig-tiny_s7.safetensors")
    assert path.stat().st_size < 2_000_000
    assert shipped_file(spec, tmp_path) == path
    assert shipped_file({**spec, "pretrain": {"steps": 2, "seed": 7}}, tmp_path) is None
    assert shipped_file({**spec, "pretrain": {"steps": 1, "seed": 8}}, tmp_path) is None
    from neulig.stages.backbone import create_quietly

    loaded = load_shipped(create_quietly("neulig-tiny", None, 1), path)  # another init: every tensor is loaded
    ids = used_token_ids(tokenizer)
    for key, value in clip.state_dict().items():
        got = loaded.state_dict()[key]
        if key == TOKEN_KEY:
            assert torch.equal(got[ids], value[ids].half().float())
            unused = torch.ones(len(value), dtype=torch.bool)
            unused[ids] = False
            assert not got[unused].any()
        elif key == "logit_scale":
            assert torch.equal(got, value)
        else:
            assert torch.allclose(got, value, atol=1e-3, rtol=1e-3)


def default_model(tmp_path):
    from neulig.config import load
    from tests.conftest import compose

    return load(compose([], tmp_path)).model


def test_the_shipped_backbone_matches_the_default_recipe(tmp_path):
    """conf/model/tiny.yaml and the shipped file agree: a change of recipe needs a new file
    (python -m neulig.models.pretrain --seed 0), otherwise every cold run pretrains again."""
    from neulig.models.openclip import open_clip
    from neulig.models.pretrain import pretrain_spec
    from neulig.models.shipped import shipped_file, shipped_header
    from neulig.stages.backbone import pretrained_tiny

    model = default_model(tmp_path)
    path = shipped_file(pretrain_spec(model))
    assert path is not None and path.stat().st_size < 2_000_000
    assert shipped_header(path)["summary"]["logit_scale"] <= 100.0
    backbone = pretrained_tiny(model, open_clip.get_tokenizer(model.arch), tmp_path / "cache", model.pretrain.seed)
    assert not (tmp_path / "cache").exists()  # loaded, not pretrained
    assert backbone.clip.logit_scale.item() <= math.log(100.0)
    assert shipped_file(pretrain_spec(model, seed=1)) is not None  # diverse_origin's second origin
    assert shipped_file(pretrain_spec(model, seed=2)) is None  # other seeds pretrain on the fly


@pytest.mark.parametrize("seed", [0, 1])
def test_the_shipped_header_is_byte_for_byte_the_commands(tmp_path, seed):
    """The header holds the spec as the command writes it today: 10 and 10.0 compare equal, so the
    spec check alone would accept a file whose bytes the command no longer makes (the slow test's
    question, asked in milliseconds for the header)."""
    import json

    from safetensors import safe_open

    from neulig.models.pretrain import pretrain_spec
    from neulig.models.shipped import FORMAT, shipped_file

    path = shipped_file(pretrain_spec(default_model(tmp_path), seed=seed))
    with safe_open(str(path), "pt") as f:
        header = json.loads(f.metadata()[FORMAT])
    written = json.dumps({**header, "spec": pretrain_spec(default_model(tmp_path), seed=seed)}, sort_keys=True)
    with safe_open(str(path), "pt") as f:
        assert f.metadata()[FORMAT] == written


@pytest.mark.slow
def test_the_shipped_file_is_what_the_command_makes(tmp_path):
    """``python -m neulig.models.pretrain --seed 0`` (one thread, as recorded in the file) rewrites the
    shipped file byte for byte (about 5 min of one CPU core; same torch build and CPU family)."""
    import subprocess
    import sys

    from neulig.models.pretrain import pretrain_spec
    from neulig.models.shipped import shipped_file, shipped_header, shipped_path
    from neulig.utils.cache import file_sha256
    from tests.conftest import REPO

    shipped = shipped_file(pretrain_spec(default_model(tmp_path)))
    assert shipped_header(shipped)["threads"] == 1
    subprocess.run([sys.executable, "-m", "neulig.models.pretrain", "--seed", "0", "--out", str(tmp_path / "out")],
                   cwd=REPO, check=True, capture_output=True, timeout=1800)
    made = shipped_path(pretrain_spec(default_model(tmp_path)), tmp_path / "out")
    assert file_sha256(made) == file_sha256(shipped)
