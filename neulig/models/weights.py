"""Where real pretrained weights are expected, and fetching them on request (``model.download``).

Lookup is pathlib only (usable before heavy imports). ``download_weights`` asks open_clip to fetch the
``arch``/``tag`` weights (open_clip's own registry of pretrained files) and puts them at the path the
lookup expects, ``<weights_dir>/<arch>_<tag>.bin``, by temporary name and rename.
"""
from __future__ import annotations

from pathlib import Path

WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors")


def weights_file(weights_dir: str | Path, arch: str, tag: str) -> Path | None:
    """The local weights file for ``arch``/``tag`` if present: ``<arch>_<tag>.{bin,pt,pth,safetensors}``,
    also under the name without ``-quickgelu`` (the same weights; open_clip names its files per tag)."""
    for name in dict.fromkeys((arch, arch.removesuffix("-quickgelu"))):
        for suffix in WEIGHT_SUFFIXES:
            candidate = Path(weights_dir) / f"{name}_{tag}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def missing_weights_message(model_name: str, weights_dir: str | Path, arch: str, tag: str) -> str:
    return (
        f"pretrained weights for model={model_name} ({arch}, tag {tag!r}) not found: put open_clip's "
        f"open_clip_pytorch_model.bin for {arch}/{tag} at {Path(weights_dir) / f'{arch}_{tag}.bin'} "
        f"(paths.weights_dir), or let open_clip fetch it with model.download=true (needs internet), or run with "
        f"model.pretrained=null for a random initialisation"
    )


def download_weights(weights_dir: str | Path, arch: str, tag: str) -> Path:
    """Fetch the pretrained weights of ``arch``/``tag`` with open_clip into ``weights_dir`` (its download
    cache lives in ``<weights_dir>/.download``) and return ``<weights_dir>/<arch>_<tag>.bin``."""
    import shutil

    from neulig.errors import NeuligError
    from neulig.models.openclip import open_clip
    from neulig.utils.cache import atomic_file

    config = open_clip.get_pretrained_cfg(arch, tag)
    if not config:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
        raise NeuligError(f"open_clip knows no pretrained weights {tag!r} for {arch} (model.pretrained); "
                          f"its tags: {tags}")
    target = Path(weights_dir) / f"{arch}_{tag}.bin"
    try:
        fetched = open_clip.download_pretrained(config, cache_dir=str(Path(weights_dir) / ".download"))
    except Exception as err:  # noqa: BLE001 - network and hub errors all mean: could not fetch
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise NeuligError(f"model.download: open_clip could not fetch {arch}/{tag} ({first}); check the connection "
                          f"or put the file at {target}") from err
    if not fetched:
        raise NeuligError(f"model.download: open_clip has no download for {arch}/{tag}; put the file at {target}")
    with atomic_file(target) as tmp:
        shutil.copyfile(fetched, tmp)
    return target
