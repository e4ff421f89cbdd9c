"""Where real pretrained weights are expected (pathlib only: usable before heavy imports)."""
from __future__ import annotations

from pathlib import Path

WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors")


def weights_file(weights_dir: str | Path, arch: str, tag: str) -> Path | None:
    """The local weights file for ``arch``/``tag`` if present (``<arch>_<tag>.{bin,pt,pth,safetensors}``)."""
    for suffix in WEIGHT_SUFFIXES:
        candidate = Path(weights_dir) / f"{arch}_{tag}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def missing_weights_message(model_name: str, weights_dir: str | Path, arch: str, tag: str) -> str:
    return (
        f"pretrained weights for model={model_name} ({arch}, tag {tag!r}) not found: put open_clip's "
        f"open_clip_pytorch_model.bin for {arch}/{tag} at {Path(weights_dir) / f'{arch}_{tag}.bin'} "
        f"(paths.weights_dir), or run with model.pretrained=null for a random initialisation"
    )
