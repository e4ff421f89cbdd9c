"""Where real pretrained weights are expected, and fetching them when they are absent.

Lookup (:func:`weights_file`) is pathlib only, usable before heavy imports. A missing file is fetched
by default (``model.download=true``, ``HF_HUB_OFFLINE`` unset) from the hub repository open_clip's
registry names for ``arch``/``tag`` (:func:`weights_source`: e.g. ``open_clip_model.safetensors`` of
``timm/vit_base_patch32_clip_224.openai``). :func:`fetch_weights` keeps the file in the format fetched
and stores it once: huggingface_hub downloads it into ``<weights_dir>/.download/<arch>_<tag>/``
(resuming an interrupted download from its ``.incomplete`` file), neulig checks that it loads and fits
the architecture (every key and shape), then renames it to ``<weights_dir>/<arch>_<tag><suffix>``. A
file that does not load or fit is removed and never published.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors")
# open_clip's names for the files of a hub repository (open_clip.constants): safetensors first, as open_clip
SAFE_WEIGHTS, TORCH_WEIGHTS = "open_clip_model.safetensors", "open_clip_pytorch_model.bin"


def weights_file(weights_dir: str | Path, arch: str, tag: str) -> Path | None:
    """The local weights file for ``arch``/``tag`` if present: ``<arch>_<tag>.{bin,pt,pth,safetensors}``,
    also under the name without ``-quickgelu`` (the same weights; open_clip names its files per tag)."""
    for name in dict.fromkeys((arch, arch.removesuffix("-quickgelu"))):
        for suffix in WEIGHT_SUFFIXES:
            candidate = Path(weights_dir) / f"{name}_{tag}{suffix}"
            if candidate.is_file():
                return candidate
    return None


@dataclass(frozen=True)
class WeightsSource:
    """The hub repository holding ``arch``/``tag``'s weights and its file names, preferred first."""

    repo: str
    files: tuple[str, ...]


def weights_source(arch: str, tag: str) -> WeightsSource | None:
    """Where open_clip's registry says ``arch``/``tag`` lives on the hub (None: nowhere on the hub)."""
    from neulig.models.backbone import register_shipped_configs
    from neulig.models.openclip import open_clip

    register_shipped_configs()
    hub = (open_clip.get_pretrained_cfg(arch, tag) or {}).get("hf_hub", "")
    if not hub:
        return None
    repo, filename = "/".join(hub.split("/")[:2]), "/".join(hub.split("/")[2:])
    if not filename:
        return WeightsSource(repo, (SAFE_WEIGHTS, TORCH_WEIGHTS))
    if filename.endswith((".bin", ".pth")):
        return WeightsSource(repo, (filename.rsplit(".", 1)[0] + ".safetensors", filename))
    return WeightsSource(repo, (filename,))


def target_path(weights_dir: str | Path, arch: str, tag: str, filename: str) -> Path:
    """``<weights_dir>/<arch>_<tag><suffix of filename>``: the name the lookup finds."""
    return Path(weights_dir) / f"{arch}_{tag}{Path(filename).suffix}"


def missing_weights_message(model_name: str, weights_dir: str | Path, arch: str, tag: str, reason: str) -> str:
    """One line: the weights of ``arch``/``tag`` are absent and not fetched (``reason``); which file, from
    which hub repository, and where to put it."""
    source = weights_source(arch, tag)
    if source is None:
        return (f"pretrained weights {arch}/{tag} (model={model_name}) not found and open_clip knows no hub source "
                f"for them: put an open_clip state dict at {target_path(weights_dir, arch, tag, '.safetensors')} "
                f"(paths.weights_dir, any of {', '.join(WEIGHT_SUFFIXES)}), or run with model.pretrained=null for a "
                "random initialisation")
    return (f"pretrained weights {arch}/{tag} (model={model_name}) not found and {reason}: put {source.files[0]} "
            f"of hub repository {source.repo} at {target_path(weights_dir, arch, tag, source.files[0])} "
            "(paths.weights_dir), or allow fetching (model.download=true, HF_HUB_OFFLINE unset)")


def fetch_weights(weights_dir: str | Path, arch: str, tag: str) -> Path:
    """Fetch ``arch``/``tag``'s weights from the hub, check them, and publish them under the name the
    lookup finds; returns that path. One-line error when the hub cannot deliver them."""
    from neulig.errors import NeuligError, first_line

    source = weights_source(arch, tag)
    if source is None:
        raise NeuligError(missing_weights_message(arch, weights_dir, arch, tag, "cannot be fetched"))
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    staging = Path(weights_dir) / ".download" / f"{arch}_{tag}"
    for filename in source.files:
        try:
            fetched = Path(hf_hub_download(source.repo, filename, local_dir=staging))
        except RemoteEntryNotFoundError:
            continue
        except Exception as err:  # noqa: BLE001 - network, repository, interrupted transfer: one line
            raise NeuligError(
                f"could not fetch {filename} of hub repository {source.repo} for {arch}/{tag} ({first_line(err)}); "
                f"run again to resume, or put the file at {target_path(weights_dir, arch, tag, filename)}") from err
        target = target_path(weights_dir, arch, tag, filename)
        try:
            check_weights(fetched, arch, f"{filename} of {source.repo}")
        except NeuligError:
            fetched.unlink(missing_ok=True)
            raise
        fetched.replace(target)
        return target
    raise NeuligError(f"hub repository {source.repo} holds none of {', '.join(source.files)} for {arch}/{tag}; "
                      f"put the weights at {target_path(weights_dir, arch, tag, source.files[0])}")


def check_weights(path: Path, arch: str, where: str) -> None:
    """Raise a one-line NeuligError unless ``path`` loads as a CLIP state dict with every key and shape
    of ``arch`` (the check :func:`neulig.merging.state_dict.first_mismatch` makes at every boundary)."""
    import torch

    from neulig.errors import NeuligError, unreadable
    from neulig.merging.state_dict import first_mismatch
    from neulig.models.backbone import clip_layout

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # every reader's error means the same: not a usable file
        raise unreadable(f"fetched weights {where}", err, "it was removed: run again to fetch it anew") from err
    state = state.get("state_dict", state) if isinstance(state, dict) else {}
    state = {k.removeprefix("module."): v for k, v in state.items()}
    problem = first_mismatch(state, clip_layout(arch))
    if problem:
        raise NeuligError(f"fetched weights {where} do not fit {arch}: {problem}; they were removed, not published")
