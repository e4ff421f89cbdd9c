"""Small randomly initialised open_clip image towers for the alignment tests (imported by the test files).

- ``tiny``: neulig's own tiny ViT (neulig/models/configs/neulig-tiny.json: width 96, 4 layers, 3 heads).
- ``vit_b32``: the ViT-B/32 structure (patch 32, head width 16 here) at width 64, 2 layers, 64 px.
- ``rn50``: the RN50 structure (3-4-6-3 bottlenecks, attention pool) at width 8, 64 px.

Every tower's state is made "lively": norm/bias vectors randomised so that a missed permutation of
any of them shows in the output, and (ResNet) BatchNorm statistics measured on images in train mode,
then jittered, so that they are non-trivial per channel and no ReLU channel is dead.
"""
from __future__ import annotations

import copy
from pathlib import Path

import open_clip
import torch
from torch import Tensor, nn

from neulig.merging.state_dict import BN_COUNT, BN_MEAN, BN_VAR

CONFIGS = Path(__file__).resolve().parents[2] / "neulig" / "models" / "configs"
TEXT = {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}
TOWERS = ("tiny", "vit_b32", "rn50")


def build(name: str, seed: int = 0) -> nn.Module:
    """The randomly initialised image tower ``name`` (eval mode)."""
    torch.manual_seed(seed)
    if name == "tiny":
        open_clip.add_model_config(str(CONFIGS))
        return open_clip.create_model("neulig-tiny").visual.eval()
    if name == "vit_b32":
        vision = {"image_size": 64, "layers": 2, "width": 64, "patch_size": 32, "head_width": 16}
    elif name == "rn50":
        vision = {"image_size": 64, "layers": [3, 4, 6, 3], "width": 8, "head_width": 32}
    else:
        raise ValueError(name)
    return open_clip.CLIP(embed_dim=32, vision_cfg=vision, text_cfg=TEXT).visual.eval()


def image_size(visual: nn.Module) -> int:
    size = visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def images(visual: nn.Module, batches: int = 2, batch: int = 16, seed: int = 0) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    size = image_size(visual)
    return [torch.randn(batch, 3, size, size, generator=g) for _ in range(batches)]


def lively_state(visual: nn.Module, seed: int = 0) -> dict[str, Tensor]:
    """A copy of ``visual``'s weights with random vectors and measured, jittered BatchNorm statistics."""
    g = torch.Generator().manual_seed(seed)
    state = {k: v.detach().clone() for k, v in visual.state_dict().items()}
    for key, value in state.items():
        if value.is_floating_point() and value.dim() == 1 and not key.endswith((BN_MEAN, BN_VAR)):
            value.add_(0.2 * torch.randn(value.shape, generator=g))
    if not any(key.endswith(BN_MEAN) for key in state):
        return state
    model = copy.deepcopy(visual)
    model.load_state_dict(state)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for x in images(visual, batches=2, batch=16, seed=seed + 100):
            model(x)
    for key, value in model.state_dict().items():
        if key.endswith(BN_MEAN):
            state[key] = value + 0.05 * value.abs().mean() * torch.randn(value.shape, generator=g)
        elif key.endswith(BN_VAR):
            state[key] = value * (0.8 + 0.4 * torch.rand(value.shape, generator=g))
        elif key.endswith(BN_COUNT):
            state[key] = value.clone()
    return state


def features(visual: nn.Module, state: dict[str, Tensor], x: Tensor) -> Tensor:
    """Image features of ``state`` run through ``visual``'s architecture (eval mode)."""
    with torch.no_grad():
        return torch.func.functional_call(visual.eval(), state, (x,))
