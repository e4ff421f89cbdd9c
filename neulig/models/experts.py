"""Your own fine-tuned experts (``model.experts``): read a checkpoint, unwrap it, check it fits.

``model.experts`` maps a dataset name to a checkpoint file; that dataset's expert is loaded from it
instead of being fine-tuned. Accepted files: ``.safetensors``, or ``.pt`` / ``.pth`` / ``.bin`` read
with ``torch.load(weights_only=True)`` (tensors only, no code runs). Accepted contents: the image
encoder's state dict (``clip.visual.state_dict()``), a full open_clip CLIP state dict (its
``visual.`` keys are taken), or either of them under a ``state_dict`` key. Keys and shapes must
match the model's image encoder exactly; floating-point tensors are cast to the encoder's dtype.

Every problem is one line naming the file: missing (checked before anything runs), unreadable or
truncated, or the first key that is missing, unexpected or of another shape (expected vs found).
The module imports torch only when a file is read, so the existence check stays cheap.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from neulig.errors import NeuligError

SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
VISUAL_PREFIX = "visual."


def expert_files(experts: Mapping | None, datasets: list[str]) -> dict[str, Path]:
    """``model.experts`` as {dataset (lower case): path}; a dataset outside ``datasets`` is an error."""
    files = {str(name).lower(): Path(str(path)).expanduser() for name, path in (experts or {}).items()}
    known = [d.lower() for d in datasets]
    for name in files:
        if name not in known:
            raise NeuligError(f"model.experts names dataset {name!r}, which is not in data.datasets "
                              f"({', '.join(known)}); remove it or run that dataset")
    return files


def missing_file_message(files: Mapping[str, Path]) -> str | None:
    """The one-line error for the first expert file that does not exist or has an unknown suffix."""
    for name, path in files.items():
        if not path.is_file():
            return f"expert checkpoint for {name} not found: {path} (model.experts.{name}); give the path of an existing file"
        if path.suffix not in SUFFIXES:
            return f"expert checkpoint {path} (model.experts.{name}) must be one of {', '.join(SUFFIXES)}, got {path.suffix!r}"
    return None


def preflight_message(experts: Mapping | None, datasets: list[str]) -> str | None:
    """The one-line error for ``model.experts`` that can be given before anything runs, else None."""
    try:
        return missing_file_message(expert_files(experts, datasets))
    except NeuligError as err:
        return str(err)


def read_checkpoint(path: Path, where: str | None = None) -> Mapping:
    """The file's top-level mapping: safetensors, or ``torch.load(weights_only=True)`` for the others.
    ``where`` names the file in errors (default: its path)."""
    where = where or str(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        import torch

        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - every reader's error means the same to the user
        if "weights only load failed" in str(err).lower():
            raise NeuligError(f"expert checkpoint {where} holds Python objects besides tensors, which "
                              "torch.load(weights_only=True) refuses; save the state dict alone, e.g. "
                              "torch.save(model.visual.state_dict(), path)") from err
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise NeuligError(f"expert checkpoint {where} cannot be read ({type(err).__name__}: {reason}); "
                          "it may be truncated: export it again") from err
    if not isinstance(content, Mapping):
        raise NeuligError(f"expert checkpoint {where} holds a {type(content).__name__}, not a state dict")
    return content


def unwrap_visual(content: Mapping) -> dict:
    """The image-encoder state dict inside ``content``: ``state_dict`` unwrapped, ``visual.`` taken."""
    if isinstance(content.get("state_dict"), Mapping):
        content = content["state_dict"]
    if any(str(k).startswith(VISUAL_PREFIX) for k in content):
        return {k[len(VISUAL_PREFIX):]: v for k, v in content.items() if str(k).startswith(VISUAL_PREFIX)}
    return dict(content)


def _shape(value) -> str:
    shape = getattr(value, "shape", None)
    return str(tuple(shape)) if shape is not None else type(value).__name__


def first_mismatch(state: Mapping, reference: Mapping) -> str | None:
    """The first key (in the encoder's order) that is missing or of another shape, else the first
    unexpected key, described with expected vs found shape; None when ``state`` fits."""
    for key, ref in reference.items():
        if key not in state:
            return f"key {key!r} is missing (expected shape {_shape(ref)})"
        if getattr(state[key], "shape", None) != ref.shape:
            return f"key {key!r} has shape {_shape(state[key])}, expected {_shape(ref)}"
    extra = [k for k in state if k not in reference]
    return f"unexpected key {extra[0]!r} (shape {_shape(state[extra[0]])})" if extra else None


def load_expert_file(path: Path, reference: Mapping, arch: str, name: str) -> dict:
    """The checked image-encoder state dict in ``path`` (the expert of dataset ``name``) for an encoder
    whose state dict is ``reference`` (shapes and dtypes; meta tensors are enough)."""
    where = f"{path} (model.experts.{name})"
    state = unwrap_visual(read_checkpoint(path, where))
    problem = first_mismatch(state, reference)
    if problem:
        raise NeuligError(f"expert checkpoint {where} does not fit the {arch} image encoder: {problem}; "
                          "give the image encoder fine-tuned from this model")
    return {k: state[k].to(ref.dtype) if state[k].is_floating_point() else state[k] for k, ref in reference.items()}
