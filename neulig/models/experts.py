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

:func:`image_tower` finds the encoder under any wrapper's prefix and :func:`checked_state` checks and
casts it; :mod:`neulig.models.expert_sources` uses both to read the other formats (whole pickled
modules, Hugging Face folders).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from neulig.errors import NeuligError, unreadable

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
            return (f"expert checkpoint for {name} not found: {path} (model.experts.{name}); "
                    "give the path of an existing file")
        if path.suffix not in SUFFIXES:
            return (f"expert checkpoint {path} (model.experts.{name}) must be one of {', '.join(SUFFIXES)}, "
                    f"got {path.suffix!r}")
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
        raise unreadable(f"expert checkpoint {where}", err, "it may be truncated: export it again") from err
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


def checked_state(state: Mapping, reference: Mapping, arch: str, where: str) -> dict:
    """``state`` in ``reference``'s key order, floating-point tensors cast to its dtypes; one-line error
    naming ``where`` and the first mismatching key when the keys or shapes differ."""
    from neulig.merging.state_dict import first_mismatch

    problem = first_mismatch(state, reference)
    if problem:
        raise NeuligError(f"expert checkpoint {where} does not fit the {arch} image encoder: {problem}; "
                          "give the image encoder fine-tuned from this model")
    return {k: state[k].to(ref.dtype) if state[k].is_floating_point() else state[k] for k, ref in reference.items()}


def tower_prefixes(state: Mapping, anchor: str) -> list[str]:
    """Every prefix ``p`` ("" or ending in ".") under which ``state`` has the key ``p + anchor``, shortest first."""
    found = {key[: len(key) - len(anchor)] for key in map(str, state) if key == anchor or key.endswith("." + anchor)}
    return sorted(found, key=lambda p: (len(p), p))


def image_tower(state: Mapping, reference: Mapping, arch: str, where: str) -> dict:
    """The image encoder inside a flat state dict whatever wraps it: the prefix (``visual.`` of a CLIP,
    ``model.visual.`` of a task-vectors ImageEncoder, ``image_encoder.model.visual.`` of its
    ImageClassifier, none for a bare tower, ...) under which the keys and shapes match ``reference``
    exactly; checked and cast as :func:`checked_state`. One-line error naming what was found otherwise."""
    from neulig.merging.state_dict import first_mismatch

    anchor = next(iter(reference))
    prefixes = tower_prefixes(state, anchor)
    if not prefixes:
        sample = ", ".join(repr(k) for k in list(state)[:3])
        raise NeuligError(f"expert checkpoint {where} holds no {arch} image encoder: no key ends with {anchor!r} "
                          f"({len(state)} tensors, e.g. {sample}); give a checkpoint of this model")
    candidates = []
    for prefix in prefixes:
        sub = {str(k)[len(prefix):]: v for k, v in state.items() if str(k).startswith(prefix)}
        problem = first_mismatch(sub, reference)
        if problem is None:
            return checked_state(sub, reference, arch, where)
        candidates.append((sum(k in sub for k in reference), prefix, problem))
    _, prefix, problem = max(candidates, key=lambda c: c[0])
    raise NeuligError(f"expert checkpoint {where} does not fit the {arch} image encoder: under "
                      f"{repr(prefix) if prefix else 'the top level'}, {problem}; give the image encoder "
                      "fine-tuned from this model")


def load_expert_file(path: Path, reference: Mapping, arch: str, name: str) -> dict:
    """The checked image-encoder state dict in ``path`` (the expert of dataset ``name``) for an encoder
    whose state dict is ``reference`` (shapes and dtypes; meta tensors are enough)."""
    where = f"{path} (model.experts.{name})"
    return checked_state(unwrap_visual(read_checkpoint(path, where)), reference, arch, where)
