"""Your own fine-tuned experts (``model.experts``): which paths, and whether an image encoder fits.

``model.experts`` maps a dataset name to a checkpoint; that dataset's expert is loaded from it instead
of being fine-tuned. :mod:`neulig.models.expert_sources` reads every format (open_clip safetensors or
torch state dicts, pickled task-vectors encoders, Hugging Face CLIP folders); this module says which
paths were given (:func:`expert_files`, existence checked before anything runs), finds the image
encoder under any wrapper's prefix (:func:`image_tower`) and checks it against the architecture
(:func:`checked_state`): keys and shapes exactly, floating-point tensors cast to the encoder's dtype.
Every problem is one line naming the path and the first key that is missing, unexpected or of another
shape (expected vs found). torch is imported only when a state dict is checked.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from neulig.errors import NeuligError

SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


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
    """The one-line error for the first expert path that does not exist or is a file of an unknown suffix
    (a folder is a Hugging Face CLIP folder; its contents are checked when it is read)."""
    for name, path in files.items():
        if path.is_dir():
            continue
        if not path.is_file():
            return (f"expert checkpoint for {name} not found: {path} (model.experts.{name}); "
                    "give the path of an existing file or Hugging Face folder")
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
    under = f"under {prefix!r}, " if prefix else ""
    raise NeuligError(f"expert checkpoint {where} does not fit the {arch} image encoder: {under}{problem}; "
                      "give the image encoder fine-tuned from this model")
