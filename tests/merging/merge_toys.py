"""Shared toy state dicts and buffer-policy checks for the merge-method tests (imported by test files)."""
from __future__ import annotations

from typing import Sequence

import torch

from neulig.merging.state_dict import pool_batchnorm

# A ResNet-like toy (open_clip ModifiedResNet names): a stem with BatchNorm, two residual stages, an
# attention-pool Linear and an integer buffer that must never be averaged.
SHAPES: dict[str, tuple[int, ...]] = {
    "conv1.weight": (4, 3),
    "bn1.weight": (4,),
    "bn1.bias": (4,),
    "layer1.0.conv1.weight": (4, 4),
    "layer2.0.conv1.weight": (3, 4),
    "attnpool.c_proj.weight": (2, 3),
    "attnpool.c_proj.bias": (2,),
}


def make_state(seed: int, dtype: torch.dtype = torch.float32, count: int = 10) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(s, generator=g).to(dtype) for k, s in SHAPES.items()}
    state["bn1.running_mean"] = torch.randn(4, generator=g).to(dtype)
    state["bn1.running_var"] = (torch.rand(4, generator=g) + 0.5).to(dtype)
    state["bn1.num_batches_tracked"] = torch.tensor(count, dtype=torch.long)
    state["pos_ids"] = torch.arange(5, dtype=torch.long) + seed
    return state


def make_family(num_experts: int, dtype: torch.dtype = torch.float32, spread: float = 0.1):
    """A base and experts fine-tuned from it (small deltas); experts have unequal BN counts."""
    base = make_state(0, dtype, count=7)
    experts = []
    for i in range(num_experts):
        noise = make_state(100 + i, dtype, count=5 + 3 * i)
        e = {k: (base[k] + spread * noise[k]) if k in SHAPES else noise[k] for k in base}
        experts.append(e)
    return base, experts


def assert_close(actual, expected, atol: float = 1e-6, rtol: float = 1e-6, msg: str = "") -> None:
    """Like torch.testing.assert_close (whose first call costs seconds to import), dtype-agnostic."""
    actual = torch.as_tensor(actual).double().cpu()
    expected = torch.as_tensor(expected).double().cpu()
    assert actual.shape == expected.shape, f"{msg} shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.allclose(actual, expected, atol=atol, rtol=rtol), f"{msg}\n{actual}\n!=\n{expected}"


def check_buffers(out: dict, base: dict, experts: Sequence[dict], weights: torch.Tensor | None = None) -> None:
    """Integer buffers (incl. BN counts) copied from the base, BN statistics pooled (MTDA rule), dtypes/devices kept."""
    assert list(out) == list(base)
    for k in base:
        assert out[k].dtype == base[k].dtype, k
        assert out[k].device == base[k].device, k
    assert torch.equal(out["pos_ids"], base["pos_ids"])  # never averaged with the experts' (shifted) ids
    mu, var, _ = pool_batchnorm([e["bn1.running_mean"] for e in experts], [e["bn1.running_var"] for e in experts],
                                [e["bn1.num_batches_tracked"] for e in experts], weights)
    assert_close(out["bn1.running_mean"], mu, atol=1e-2 if mu.dtype == torch.bfloat16 else 1e-5)
    assert_close(out["bn1.running_var"], var, atol=1e-2 if var.dtype == torch.bfloat16 else 1e-5)
    # the pooled variance is not the naive mean of the variances (the experts' means differ)
    naive = torch.stack([e["bn1.running_var"].double() for e in experts]).mean(0)
    assert len(experts) == 1 or not torch.allclose(out["bn1.running_var"].double(), naive, atol=1e-3)
    # num_batches_tracked is an integer buffer: copied from the base (state_dict.py rule 2)
    assert torch.equal(out["bn1.num_batches_tracked"], base["bn1.num_batches_tracked"])


def assert_params_close(out: dict, ref: dict, atol: float = 1e-5) -> None:
    for k in SHAPES:
        assert_close(out[k], ref[k], atol=atol, rtol=1e-5, msg=k)


def assert_params_differ(out: dict, ref: dict) -> None:
    assert any(not torch.allclose(out[k].double(), ref[k].double(), atol=1e-6) for k in SHAPES)


DTYPES = [torch.float32, torch.float64]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


_VISUAL: dict = {}


def tiny_visual():
    """The tiny open_clip ViT's image tower, randomly initialised (built once per session)."""
    from neulig.stages.backbone import create_quietly

    if "visual" not in _VISUAL:
        _VISUAL["visual"] = create_quietly("neulig-tiny", None, 0).visual.eval()
    return _VISUAL["visual"]
