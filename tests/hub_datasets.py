"""Tiny dataset repositories in the hub's parquet layout, generated at test time.

``write_parquet_dataset(root, "tanganke/dtd", classnames, {"train": 20, "test": 10})`` writes
``root/datasets/tanganke/dtd/`` with ``README.md`` (a card whose ``configs`` map the splits to
``data/<split>-*`` and whose ``dataset_info`` names the ``label`` classes) and one parquet shard per split,
``data/<split>-00000-of-00001.parquet``, with an ``image`` column (struct of PNG ``bytes`` and ``path``)
and an int64 ``label`` column: the layout of FusionBench's repositories. Served by the loopback server
of ``tests/hub_server.py`` (which serves ``root/datasets/<org>/<name>/<files>`` through the hub's file
protocol), neulig fetches such a repository exactly as it fetches the real one.

What makes neulig read them:

- dataset names that neulig maps to those repositories (:data:`neulig.data.hub.HUB_REPOS`), e.g.
  ``data=paper5 data.datasets=[dtd,eurosat]`` with repositories ``tanganke/dtd`` and ``tanganke/eurosat``
  written with ``classnames=REAL_SPECS[name].classnames`` (``neulig.data.real``), so their labels map
  one to one;
- ``data.root=<an empty folder>`` (nothing under ``<root>/<name>``, so nothing local is found),
  ``data.source=auto`` (the default) or ``hub``, ``data.download=true`` (the default);
- ``data.sizes={train:N,val:M,test:K}`` small enough for the generated splits (the validation split is
  carved from ``train``: give ``train`` at least ``N + M`` rows);
- in the environment: ``HF_ENDPOINT=<server url>``, ``HF_HUB_CACHE`` (or ``HF_HOME``) an empty folder,
  and ``HF_HUB_OFFLINE`` unset (``HF_HUB_OFFLINE=1`` must make the same command fail with one line).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np


def png_bytes(rng: np.random.Generator, size: int) -> bytes:
    from PIL import Image

    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def card(classnames: list[str], sizes: dict[str, int]) -> str:
    """A dataset card (YAML front matter) as the hub's parquet conversion writes it."""
    lines = ["---", "configs:", "- config_name: default", "  data_files:"]
    for split in sizes:
        lines += [f"  - split: {split}", f"    path: data/{split}-*"]
    lines += ["dataset_info:", "  features:", "  - name: image", "    dtype: image", "  - name: label",
              "    dtype:", "      class_label:", "        names:"]
    lines += [f"          '{k}': {name!r}" for k, name in enumerate(classnames)]
    lines += ["  splits:"] + [f"  - name: {split}\n    num_examples: {n}" for split, n in sizes.items()]
    return "\n".join(lines + ["---", "", "A dataset generated for neulig's tests.", ""])


def write_parquet_dataset(root: Path, repo_id: str, classnames: list[str], sizes: dict[str, int],
                          image_size: int = 24, seed: int = 0) -> None:
    """Write a repository ``repo_id`` of random PNG images with labels ``i % len(classnames)``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(root) / "datasets" / repo_id
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text(card(list(classnames), sizes))
    rng = np.random.default_rng(seed)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    for split, n in sizes.items():
        images = [{"bytes": png_bytes(rng, image_size), "path": f"{split}_{i}.png"} for i in range(n)]
        table = pa.table({"image": pa.array(images, type=image_type),
                          "label": pa.array([i % len(classnames) for i in range(n)], type=pa.int64())})
        pq.write_table(table, folder / "data" / f"{split}-00000-of-00001.parquet")
