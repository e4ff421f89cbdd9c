"""Model repositories on the Hugging Face hub, named ``hf://<org>/<name>``, read through huggingface_hub.

The hub cache is huggingface_hub's own (``HF_HOME`` / ``HF_HUB_CACHE``, default
``~/.cache/huggingface/hub``), so repositories a FusionBench user already downloaded are reused as they
are. A repository is looked up in that cache first, without a request; only when it is absent, fetching
is allowed (``model.download``, default true) and ``HF_HUB_OFFLINE`` is unset is it fetched. huggingface_hub
writes every file to an ``.incomplete`` blob and links it into the snapshot only when complete, so an
interrupted download publishes nothing and the next run resumes it.

Names (``hf://<org>/<name>``) are parsed by :mod:`neulig.config.hub_names`, string-only, so the config
schema checks them before any heavy import. huggingface_hub is imported late.
"""
from __future__ import annotations

from pathlib import Path

# the files neulig reads from a Hugging Face CLIP folder (safetensors preferred, torch files as fall-back)
MODEL_FILES = ("*.json", "*.safetensors")
TORCH_MODEL_FILES = ("*.json", "*.bin")








def offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set to a true value: huggingface_hub's own reading."""
    from huggingface_hub import constants

    return constants.is_offline_mode()


def fetching_allowed(download: bool) -> bool:
    """May a missing file be fetched: ``model.download`` (or ``data.download``) and not offline."""
    return download and not offline()


def why_not_fetched(download: bool, option: str = "model.download") -> str:
    """The reason a missing file is not fetched, for one-line errors."""
    return "HF_HUB_OFFLINE=1 is set" if offline() else f"{option}=false"


def cache_dir() -> Path:
    """huggingface_hub's cache folder (``HF_HUB_CACHE``, ``HF_HOME``/hub, or its default)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _snapshot(repo_id: str, local_only: bool) -> Path:
    from huggingface_hub import snapshot_download

    folder = Path(snapshot_download(repo_id, allow_patterns=list(MODEL_FILES), local_files_only=local_only))
    if not any(folder.glob("*.safetensors")):  # a repository holding torch files only
        folder = Path(snapshot_download(repo_id, allow_patterns=list(TORCH_MODEL_FILES), local_files_only=local_only))
    return folder


def cached_repo(repo_id: str) -> Path | None:
    """The local snapshot of ``repo_id`` in the hub cache when it is complete, without any request."""
    try:
        return _snapshot(repo_id, local_only=True)
    except Exception:  # noqa: BLE001 - not cached, or cached partly: either way not usable as it is
        return None


def missing_repo_message(repo_id: str, what: str, download: bool) -> str:
    """One line: ``what`` (e.g. ``the expert for dtd``) is not in the hub cache and may not be fetched."""
    return (f"{what}: hub repository {repo_id} is not in the hub cache {cache_dir()} and {why_not_fetched(download)}; "
            f"fetch it once with `hf download {repo_id} --include '*.json' '*.safetensors'` on a connected machine "
            f"(same HF_HOME), "
            f"or allow fetching (model.download=true, HF_HUB_OFFLINE unset)")


def repo_folder(repo_id: str, what: str, download: bool) -> Path:
    """The local folder of hub repository ``repo_id``: the cached snapshot (no request), else fetched
    into the hub cache when allowed; one-line error naming the repository otherwise."""
    from neulig.errors import NeuligError, first_line
    from neulig.utils.log import log

    cached = cached_repo(repo_id)
    if cached is not None:
        return cached
    if not fetching_allowed(download):
        raise NeuligError(missing_repo_message(repo_id, what, download))
    log.info(f"fetching {what} from the hub: {repo_id} into {cache_dir()}")
    try:
        return _snapshot(repo_id, local_only=False)
    except Exception as err:  # noqa: BLE001 - network, missing repository, interrupted transfer: one line each
        raise NeuligError(f"{what}: could not fetch hub repository {repo_id} ({first_line(err)}); check the name "
                          "and the connection, then run again (a partial download is resumed)") from err

