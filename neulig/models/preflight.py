"""The model files a run cannot get, named before anything is fetched or computed (no request made).

A pretrained weights file passes when it is in ``paths.weights_dir`` or may be fetched (``model.download``,
``HF_HUB_OFFLINE`` unset, and open_clip's registry names a hub source); a hub repository (``hf://``)
passes when it is in the hub cache or may be fetched; a local expert, base or experts folder passes when
it exists (its contents are checked when read, still before any training).
"""
from __future__ import annotations

from pathlib import Path

from neulig.config.model import SHIPPED_PRETRAINING, ModelConfig


def missing_model_files(model: ModelConfig, weights_dir: str | Path, datasets: list[str]) -> list[str]:
    """One line per weights file, expert or base of ``model`` that is absent and cannot be fetched."""
    from neulig.config.hub_names import is_hub
    from neulig.models.experts import preflight_message
    from neulig.models.hub_experts import missing_messages

    lines = []
    for option in ("weights", "experts_dir"):
        path = getattr(model, option)
        if path and not is_hub(path) and not Path(path).expanduser().exists():
            lines.append(f"model.{option}={path} does not exist; give the path of the "
                         f"{'base weights' if option == 'weights' else 'folder of experts'}")
    lines += missing_weights(model, weights_dir)
    local_experts = {d: p for d, p in (model.experts or {}).items() if not is_hub(str(p))}
    message = preflight_message(local_experts, datasets)
    if message:
        lines.append(message)
    return lines + missing_messages(model, datasets)


def missing_weights(model: ModelConfig, weights_dir: str | Path) -> list[str]:
    """The pretrained weights files the run needs and can neither find nor fetch."""
    from neulig.config.hub_names import is_hub
    from neulig.models.hub import fetching_allowed, why_not_fetched
    from neulig.models.weights import missing_weights_message, weights_file, weights_source

    # base weights given: they may hold the whole CLIP, known only once read (a hub experts folder holds no base)
    given_base = model.weights or (model.experts_dir if not is_hub(model.experts_dir) else None)
    if model.pretrained in (None, SHIPPED_PRETRAINING) or given_base:
        return []
    lines = []
    for origin in model.origins or [model.pretrained]:
        if weights_file(weights_dir, model.arch, origin) is not None:
            continue
        if not fetching_allowed(model.download):
            lines.append(missing_weights_message(model.name, weights_dir, model.arch, origin,
                                                 why_not_fetched(model.download)))
        elif weights_source(model.arch, origin) is None:
            lines.append(missing_weights_message(model.name, weights_dir, model.arch, origin, "cannot be fetched"))
    return lines
