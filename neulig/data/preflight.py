"""The datasets a run cannot get, named before anything is fetched or computed.

A real dataset passes when its files are already complete (under ``<data.root>/<name>`` or in the
huggingface_hub cache) or when a source may fetch it (``data.download=true``, no ``HF_HUB_OFFLINE=1``,
and ``data.source`` has a way to it); :func:`neulig.data.sources.plan` decides, without importing torch.
Generated datasets always pass.
"""
from __future__ import annotations

from pathlib import Path


def missing_datasets(data_config) -> list[str]:
    """One line per dataset of ``data_config`` (a :class:`~neulig.config.data.DataConfig`) that is absent
    and cannot be fetched, naming the dataset, where it comes from and the folder to put it in."""
    from neulig.data.catalog import real_names
    from neulig.data.sources import missing_message, plan

    lines = []
    for name in data_config.names:
        if name not in real_names():
            continue
        root = Path(data_config.root) / name
        if plan(name, root, data_config.source, data_config.download) is None:
            lines.append(missing_message(name, root, data_config.download, data_config.source))
    return lines
