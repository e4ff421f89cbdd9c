"""Pretrained tiny backbones shipped with the package, so a cold run needs no pretraining.

``neulig/models/pretrained/<arch>_s<seed>.safetensors`` holds the result of the offline pretraining
(:mod:`neulig.models.pretrain`) for one seed, written by

    python -m neulig.models.pretrain --seed 0

Its header records the pretraining spec (architecture, ``model.pretrain``, image size, corpus
version): :func:`shipped_file` returns the file only when that spec equals the requested one, so any
change to the recipe falls back to pretraining on the fly (cached), as do other seeds.

Size: float tensors are stored as float16 (the logit scale as float32), and of the text token
embedding (vocabulary 49,408 x width) only the rows of the tokens the corpus captions use; the
others are never trained and load as zeros. About 1.2 MB instead of 15 MB.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

SHIPPED_DIR = Path(__file__).parent / "pretrained"
FORMAT = "neulig-shipped-1"
TOKEN_KEY = "token_embedding.weight"


def shipped_path(spec: dict, folder: Path | None = None) -> Path:
    return Path(folder or SHIPPED_DIR) / f"{spec['arch']}_s{spec['pretrain']['seed']}.safetensors"


def shipped_file(spec: dict, folder: Path | None = None) -> Path | None:
    """The shipped file pretrained with exactly ``spec``, or None."""
    path = shipped_path(spec, folder)
    if not path.is_file():
        return None
    return path if shipped_header(path).get("spec") == spec else None


def shipped_header(path: Path) -> dict:
    """The neulig header of a shipped file (format, spec, summary, torch version, threads); {} if none."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    try:
        header = json.loads(meta.get(FORMAT, "{}"))
    except ValueError:
        return {}
    return header if isinstance(header, dict) else {}


def used_token_ids(tokenizer) -> torch.Tensor:
    """Sorted ids of every token in the corpus captions (with start, end and padding tokens)."""
    from neulig.data.pretraining import corpus_captions
    from neulig.models.pretrain import caption_tokens

    concepts, templates = corpus_captions()
    return torch.unique(caption_tokens(tokenizer, concepts, templates))


def save_shipped(clip: nn.Module, tokenizer, spec: dict, path: Path, extra: dict | None = None) -> Path:
    """Write ``clip`` compactly with ``spec`` (and ``extra``, JSON values) in the header."""
    from neulig.models.checkpoints import save_state

    ids = used_token_ids(tokenizer)
    state = {}
    for key, value in clip.state_dict().items():
        if key == TOKEN_KEY:
            state["token_embedding.ids"] = ids.to(torch.int32)
            state["token_embedding.rows"] = value[ids].half()
        elif key == "logit_scale" or not value.is_floating_point():
            state[key] = value
        else:
            state[key] = value.half()
    path.parent.mkdir(parents=True, exist_ok=True)
    # one metadata entry: safetensors writes several in an arbitrary order, which would change the bytes
    save_state(path, state, {FORMAT: json.dumps({"spec": spec, **(extra or {})}, sort_keys=True)})
    return path


def load_shipped(clip: nn.Module, path: Path) -> nn.Module:
    """Load a shipped file into ``clip`` (same architecture) strictly; unused token rows are zero."""
    from neulig.models.checkpoints import load_state

    state = load_state(path)
    ids, rows = state.pop("token_embedding.ids").long(), state.pop("token_embedding.rows")
    reference = clip.state_dict()
    table = torch.zeros_like(reference[TOKEN_KEY])
    table[ids] = rows.to(table.dtype)
    state[TOKEN_KEY] = table
    clip.load_state_dict({k: v.to(reference[k].dtype) for k, v in state.items()}, strict=True)
    return clip
