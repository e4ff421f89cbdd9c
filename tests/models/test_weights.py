"""Pretrained weights fetched from the hub through the real huggingface_hub client (a loopback server):
kept in the format fetched, stored once, checked before they are published, nothing published when the
connection drops, and resumed by the next run."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from neulig.errors import NeuligError
from neulig.models import weights
from neulig.models.weights import SAFE_WEIGHTS, TORCH_WEIGHTS, WeightsSource, fetch_weights, weights_file
from tests.hub_server import HubServer, go_online

ARCH, TAG, REPO = "neulig-tiny", "hubtag", "timm/neulig_tiny.hubtag"


def tiny_state(seed: int = 0) -> dict:
    from neulig.stages.backbone import create_quietly

    return {k: v.contiguous() for k, v in create_quietly(ARCH, None, seed).state_dict().items()}


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A server holding REPO (the safetensors file only), online, and open_clip's registry pointing at it."""
    repo = tmp_path / "hub" / "models" / REPO
    repo.mkdir(parents=True)
    save_file(tiny_state(), str(repo / SAFE_WEIGHTS))
    monkeypatch.setattr(weights, "weights_source", lambda arch, tag: WeightsSource(REPO, (SAFE_WEIGHTS, TORCH_WEIGHTS)))
    with HubServer(tmp_path / "hub") as server:
        go_online(monkeypatch, server, tmp_path / "hf_cache")
        yield server


def published(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file())


def test_fetched_weights_keep_their_format_and_load(hub, tmp_path):
    from neulig.stages.backbone import create_quietly

    target = fetch_weights(tmp_path / "weights", ARCH, TAG)
    assert target == tmp_path / "weights" / f"{ARCH}_{TAG}.safetensors"  # not renamed to a .bin torch.load reads
    assert published(tmp_path / "weights") == [target.name]  # stored once: the download was renamed, not copied
    assert not list((tmp_path / "weights" / ".download").rglob("*.safetensors"))
    assert weights_file(tmp_path / "weights", ARCH, TAG) == target
    clip = create_quietly(ARCH, target, 0)  # open_clip reads it by its suffix
    assert all(torch.equal(clip.state_dict()[k], v) for k, v in tiny_state().items())
    assert hub.downloads() == [f"/{REPO}/resolve/main/{SAFE_WEIGHTS}"]


def test_a_torch_file_is_fetched_when_the_repository_has_no_safetensors(hub, tmp_path):
    repo = hub.root / "models" / REPO
    (repo / SAFE_WEIGHTS).unlink()
    torch.save(tiny_state(1), repo / TORCH_WEIGHTS)
    target = fetch_weights(tmp_path / "weights", ARCH, TAG)
    assert target.name == f"{ARCH}_{TAG}.bin"
    assert torch.equal(torch.load(target, weights_only=True)["positional_embedding"], tiny_state(1)["positional_embedding"])


def test_a_dropped_connection_publishes_nothing_and_the_next_run_completes(hub, tmp_path):
    size = (hub.root / "models" / REPO / SAFE_WEIGHTS).stat().st_size
    hub.drop(SAFE_WEIGHTS, size // 2)
    with pytest.raises(NeuligError) as err:
        fetch_weights(tmp_path / "weights", ARCH, TAG)
    message = str(err.value)
    assert "\n" not in message and REPO in message and "run again" in message
    assert weights_file(tmp_path / "weights", ARCH, TAG) is None
    assert published(tmp_path / "weights") == []
    hub.drop(None)
    target = fetch_weights(tmp_path / "weights", ARCH, TAG)
    assert weights_file(tmp_path / "weights", ARCH, TAG) == target


def test_weights_of_another_architecture_are_removed_not_published(hub, tmp_path):
    state = tiny_state()
    state["positional_embedding"] = state["positional_embedding"][:-1].contiguous()
    save_file(state, str(hub.root / "models" / REPO / SAFE_WEIGHTS))
    with pytest.raises(NeuligError, match=r"do not fit neulig-tiny: key 'positional_embedding' has shape"):
        fetch_weights(tmp_path / "weights", ARCH, TAG)
    assert published(tmp_path / "weights") == []
    assert not list((tmp_path / "weights").rglob(SAFE_WEIGHTS))  # removed from the download folder too


def test_a_repository_without_the_files_is_one_line(hub, tmp_path):
    (hub.root / "models" / REPO / SAFE_WEIGHTS).unlink()
    with pytest.raises(NeuligError, match=rf"hub repository {REPO} holds none of {SAFE_WEIGHTS}, {TORCH_WEIGHTS}"):
        fetch_weights(tmp_path / "weights", ARCH, TAG)


def test_open_clip_registry_names_the_hub_file():
    source = weights.weights_source("ViT-B-32-quickgelu", "openai")
    assert source == WeightsSource("timm/vit_base_patch32_clip_224.openai", (SAFE_WEIGHTS, TORCH_WEIGHTS))
    assert weights.weights_source("neulig-tiny", "openai") is None
