"""Encoder checkpoints as safetensors with strict key/shape checks on load (nanoGPT-style porting)."""
from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from neulig.errors import NeuligError
from neulig.merging.state_dict import StateDict, first_mismatch


def save_state(path: Path, state: StateDict, metadata: dict[str, str] | None = None) -> None:
    """Write ``state`` as safetensors (``metadata``: strings stored in the file's header)."""
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path), metadata=metadata)


def load_state(path: Path, reference: StateDict | None = None) -> StateDict:
    """Load a state dict; with ``reference``, demand identical keys, shapes and dtypes."""
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise NeuligError(f"checkpoint {path} cannot be read ({err}); delete it and rerun to rebuild it") from err
    problem = None if reference is None else first_mismatch(state, reference, dtypes=True)
    if problem:
        raise NeuligError(f"checkpoint {path} does not match the architecture: {problem}")
    return state
