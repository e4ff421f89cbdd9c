"""hf:// names of experts and base: FusionBench's repository names, precedence of model.experts, the
schema's syntax check, and what the preflight says without a request when fetching is forbidden."""
from __future__ import annotations

import pytest

from neulig.config.fields import ConfigError
from neulig.models.hub_experts import hub_references, hub_task, missing_messages, with_local_folders
from tests.methods.toys import model_config

HUB = ["model.experts_dir=hf://tanganke/clip-vit-base-patch32", "model.weights=hf://openai/clip-vit-base-patch32"]


def test_fusionbench_repository_names_per_task():
    refs = hub_references(model_config("vit_b32", *HUB), ["sun397", "cars", "dtd"])
    assert refs.experts == {"sun397": "tanganke/clip-vit-base-patch32_sun397",
                            "cars": "tanganke/clip-vit-base-patch32_stanford-cars",
                            "dtd": "tanganke/clip-vit-base-patch32_dtd"}
    assert refs.base == "openai/clip-vit-base-patch32"
    assert hub_task("cars") == "stanford-cars" and hub_task("eurosat") == "eurosat"


def test_entries_of_model_experts_win_over_the_hub_folder():
    model = model_config("vit_b32", *HUB, "data.datasets=[dtd,svhn,mnist]",
                         "model.experts={dtd:hf://me/my-dtd,svhn:local/svhn.safetensors}")
    refs = hub_references(model, ["dtd", "svhn", "mnist"])
    assert refs.experts == {"dtd": "me/my-dtd", "mnist": "tanganke/clip-vit-base-patch32_mnist"}
    assert refs.expert_what("dtd") == "the expert for dtd (model.experts.dtd)"
    assert refs.expert_what("mnist") == "the expert for mnist (model.experts_dir)"


def test_local_values_are_left_alone():
    model = model_config("vit_b32", "model.weights=base.safetensors")
    assert with_local_folders(model, ["dtd", "svhn"]) is model


@pytest.mark.parametrize("value", ["hf://", "hf://onlyname", "hf://a/b/c", "hf://a/../b", "hf:///x"])
def test_malformed_hub_names_are_refused_by_the_schema(value):
    with pytest.raises(ConfigError, match=r"hf://<org>/<name>, e\.g\. hf://openai/clip-vit-base-patch32"):
        model_config("vit_b32", f"model.weights={value}")


def test_forbidden_fetching_names_every_missing_repository_without_a_request(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # empty cache
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    model = model_config("vit_b32", *HUB, "model.download=false")
    lines = missing_messages(model, ["dtd", "cars"])
    assert len(lines) == 3 and all("\n" not in line and "model.download=false" in line for line in lines)
    assert "the expert for cars (model.experts_dir): hub repository tanganke/clip-vit-base-patch32_stanford-cars" \
        in lines[1]
    assert lines[2].startswith("the base weights (model.weights): hub repository openai/clip-vit-base-patch32")
    assert missing_messages(model_config("vit_b32", *HUB), ["dtd"]) == []  # allowed: fetched when needed


def test_hub_experts_need_their_base():
    with pytest.raises(ConfigError, match=r"model\.weights=null: the experts' base when model\.experts_dir=hf://"):
        model_config("vit_b32", "model.experts_dir=hf://tanganke/clip-vit-base-patch32")
