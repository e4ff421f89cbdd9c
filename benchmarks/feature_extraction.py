"""Feature extraction throughput (images/s): neulig's ``stages.features.encode`` vs a plain loop of open_clip's
own preprocess in a DataLoader, with the same worker processes and the same image tower.

Images: ``--images`` random JPEGs at realistic sizes (short side 300..500 px, photo-like: smooth colour
fields plus noise) written to a temporary folder, and the same encoded bytes in one parquet file in the
hub's layout. Contenders (the same randomly initialised open_clip tower, ``pretrained=None``):

  open_clip_plain   ``open_clip.create_model_and_transforms(arch)``'s eval preprocess on each file, in a
                    ``DataLoader(num_workers=W, pin_memory=<cuda>)``, ``visual(x.to(device))``;
  neulig_files      ``encode`` over the files as neulig opens an image folder (``LabelledView`` of a
                    torchvision ``ImageFolder`` with ``real.clip_transform``), ``num_workers=W``;
  neulig_parquet    ``encode`` over the parquet file as neulig reads a hub repository (``ParquetImages``).

    python benchmarks/feature_extraction.py                                  # ViT-B/32, CPU, 2 workers
    python benchmarks/feature_extraction.py --device cuda --images 2048 --workers 8 --batch 256
    python benchmarks/feature_extraction.py --model tiny --images 8 --batch 4 --repeats 1   # smoke

Issue target: neulig / plain >= 0.95x on the CPU, and on a GPU when one is available.
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

TARGET = 0.95


def photo(rng: np.random.Generator) -> Image.Image:
    """A photo-like RGB image: a smooth colour field (upsampled 8x8 noise) plus grain, short side 300..500."""
    h, w = int(rng.integers(300, 501)), int(rng.integers(300, 641))
    coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    grain = rng.normal(0, 12, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(coarse, np.float32) + grain, 0, 255).astype(np.uint8))


def write_images(folder: Path, n: int, seed: int = 0) -> list[bytes]:
    """``n`` JPEGs under ``folder/<class>/`` (4 classes) and their bytes, in ImageFolder's order."""
    rng, encoded = np.random.default_rng(seed), []
    for _ in range(n):
        buffer = io.BytesIO()
        photo(rng).save(buffer, format="JPEG", quality=90)
        encoded.append(buffer.getvalue())
    for i, data in enumerate(encoded):
        path = folder / f"c{i % 4}" / f"img_{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return encoded


def write_parquet(path: Path, files: list[Path]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    images = [{"bytes": f.read_bytes(), "path": f.name} for f in files]
    pq.write_table(pa.table({"image": pa.array(images, type=image_type),
                             "label": pa.array([0] * len(files), type=pa.int64())}), path)


class Files(torch.utils.data.Dataset):
    """The plain reference: PIL open + open_clip's preprocess, one file per item."""

    def __init__(self, paths: list[Path], preprocess):
        self.paths, self.preprocess = paths, preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.preprocess(Image.open(self.paths[i])), 0


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vit_b32", choices=sorted(C.MODELS), help="open_clip architecture (random init)")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in the main process (0: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = C.resolve_device(args.device)

    import open_clip
    from torchvision.datasets import ImageFolder

    from neulig.data.hub import ParquetImages
    from neulig.data.real import LabelledView, clip_transform
    from neulig.models.backbone import register_shipped_configs
    from neulig.stages.features import encode

    register_shipped_configs()  # the tiny architecture (--model tiny, the smoke test)
    arch = C.MODELS[args.model]
    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=None)
    visual = model.visual.to(device).eval()
    size = C.image_size(visual)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        write_images(folder, args.images)
        tree = ImageFolder(str(folder), transform=clip_transform(size))
        paths = [Path(p) for p, _ in tree.samples]
        write_parquet(Path(tmp) / "train-00000-of-00001.parquet", paths)
        labels = np.zeros(len(paths), np.int64)
        files_view = LabelledView(tree, np.arange(len(paths)), labels)
        parquet_view = LabelledView(ParquetImages([Path(tmp) / "train-00000-of-00001.parquet"], clip_transform(size)),
                                    np.arange(len(paths)), labels)
        plain_set = Files(paths, preprocess)

        @torch.no_grad()
        def plain() -> torch.Tensor:
            batches = torch.utils.data.DataLoader(plain_set, batch_size=args.batch, num_workers=args.workers,
                                                  pin_memory=device.type == "cuda")
            return torch.cat([visual(x.to(device)).float().cpu() for x, _ in batches])

        fns = {"open_clip_plain": plain,
               "neulig_files": lambda: encode(visual, files_view, args.batch, device, args.workers),
               "neulig_parquet": lambda: encode(visual, parquet_view, args.batch, device, args.workers)}
        reference = plain()
        for name in ("neulig_files", "neulig_parquet"):
            gap = float((fns[name]() - reference).abs().max())
            assert gap < 1e-3, f"{name} computes other features than open_clip's preprocess (max gap {gap:.2e})"
        seconds = C.time_interleaved(fns, device, warmup=0, repeats=args.repeats)

    rate = {k: args.images / s for k, s in seconds.items()}
    print(f"{arch}, random init, {args.images} JPEGs (300..500 px short side), batch {args.batch}, "
          f"{args.workers} workers, {C.device_name(device)}")
    rows = [[k, f"{seconds[k]:.2f}", f"{rate[k]:.1f}", f"{rate[k] / rate['open_clip_plain']:.3f}x"] for k in fns]
    print(C.table(["variant", "s / pass", "images/s", "vs plain"], rows))
    ratios = {name: rate[name] / rate["open_clip_plain"] for name in ("neulig_files", "neulig_parquet")}
    for name, ratio in ratios.items():
        print(f"RATIO {name}/open_clip_plain images/s: {ratio:.3f}x ({C.verdict(ratio, TARGET, smaller_is_better=False)})")
    return {"images_per_s": rate, "ratios": ratios}


if __name__ == "__main__":
    main()
