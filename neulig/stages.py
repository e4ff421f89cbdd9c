"""Pipeline stages with content-hash caching: backbone, heads, experts, expert features.

Each stage's key hashes exactly the configuration that determines its product plus the keys of its
inputs, so changing e.g. ``merge=`` reuses every expert, while changing the fine-tuning recipe
retrains them. Products are safetensors + meta.json published atomically (``utils.cache``).
"""
from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from neulig.data.base import DatasetSpec, LoadedDataset
from neulig.errors import NeuligError
from neulig.merging.state_dict import StateDict
from neulig.models.checkpoints import load_state, save_state
from neulig.utils.cache import CacheEntry, config_hash
from neulig.utils.log import log


@dataclass
class Backbone:
    name: str
    arch: str
    clip: nn.Module
    tokenizer: object
    key: str

    @property
    def visual(self) -> nn.Module:
        return self.clip.visual

    @property
    def feature_dim(self) -> int:
        return int(self.clip.visual.output_dim)


@contextmanager
def _quiet_open_clip():
    """open_clip warns "No pretrained weights loaded" (on the root logger) for every random init."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _quiet_create(arch: str, weights: Path | None, seed: int) -> nn.Module:
    from neulig.models.backbone import create_clip

    with _quiet_open_clip():
        return create_clip(arch, weights, seed)


def encoder_layout(arch: str) -> StateDict:
    """The image encoder's state dict of ``arch`` as meta tensors: keys, shapes and dtypes, built in
    milliseconds without memory or initialisation (to check a checkpoint before anything runs)."""
    import open_clip

    from neulig.models.backbone import register_shipped_configs

    register_shipped_configs()
    with _quiet_open_clip(), torch.device("meta"):
        return open_clip.create_model(arch, device="meta").visual.state_dict()


def user_experts(model_cfg: dict, names: list[str]) -> dict[str, tuple[StateDict, str]]:
    """The experts given as files in ``model.experts``: {dataset: (checked state dict, cache key)}.

    The key is derived from the file's SHA-256 only, so its cached features follow the file's content.
    """
    from neulig.models.experts import expert_files, load_expert_file, missing_file_message
    from neulig.utils.cache import file_sha256

    files = expert_files(model_cfg.get("experts"), names)
    message = missing_file_message(files)
    if message:
        raise NeuligError(message)
    layout = encoder_layout(model_cfg["arch"]) if files else {}
    out = {}
    for name, path in files.items():
        state = load_expert_file(path, layout, model_cfg["arch"], name)
        digest = file_sha256(path)
        log.info(f"expert for {name}: {path} (sha256 {digest[:12]}), not fine-tuned")
        out[name] = (state, config_hash("expert-file", digest))
    return out


def load_backbone(model_cfg: dict, weights_dir: str, cache_dir: Path) -> Backbone:
    """The shared pretrained backbone: local real weights, random init, or the tiny offline pretraining."""
    import open_clip

    from neulig.models.backbone import register_shipped_configs
    from neulig.models.weights import missing_weights_message, weights_file

    register_shipped_configs()
    arch, tag, name = model_cfg["arch"], model_cfg.get("pretrained"), model_cfg["name"]
    tokenizer = open_clip.get_tokenizer(arch)
    if tag is None:
        clip = _quiet_create(arch, None, model_cfg.get("init_seed", 0))
        return Backbone(name, arch, clip, tokenizer, config_hash("random", arch, model_cfg.get("init_seed", 0)))
    if tag == "neulig":  # the tiny backbone's own offline pretraining, cached
        spec = {"arch": arch, "pretrain": model_cfg["pretrain"], "image_size": model_cfg["image_size"]}
        entry = CacheEntry(cache_dir, "backbone", config_hash("pretrain", spec))
        clip = _quiet_create(arch, None, model_cfg["pretrain"]["seed"])
        if entry.load_meta() is None:
            from neulig.models.pretrain import pretrain_tiny

            log.info(f"pretraining the {name} backbone offline (cached at {entry.dir})")
            start = time.time()
            summary = pretrain_tiny(clip, tokenizer, image_size=model_cfg["image_size"], **model_cfg["pretrain"])

            def write(tmp: Path) -> dict:
                save_state(tmp / "model.safetensors", clip.state_dict())
                return {"stage": "backbone", "spec": spec, "summary": summary, "seconds": time.time() - start}

            entry.publish(write)
        clip.load_state_dict(load_state(entry.dir / "model.safetensors", clip.state_dict()))
        return Backbone(name, arch, clip.eval(), tokenizer, entry.key)
    path = weights_file(weights_dir, arch, tag)
    if path is None:
        raise NeuligError(missing_weights_message(name, weights_dir, arch, tag))
    clip = _quiet_create(arch, path, 0)
    return Backbone(name, arch, clip, tokenizer, config_hash("weights", arch, tag, path.stat().st_size))


def dataset_key(dataset: LoadedDataset, data_cfg: dict) -> dict:
    return {"name": dataset.name, "sizes": data_cfg.get("sizes"), "split_seed": data_cfg.get("split_seed", 0),
            "classes": list(dataset.spec.classnames)}


def load_head(backbone: Backbone, spec: DatasetSpec, cache_dir: Path) -> Tensor:
    """The frozen zero-shot head [C, D] of ``spec`` for ``backbone``, cached."""
    from neulig.models.heads import build_head_weight

    entry = CacheEntry(cache_dir, "heads", config_hash("head", backbone.key, spec.name, spec.classnames, spec.templates))
    if entry.load_meta() is None:
        weight = build_head_weight(backbone.clip, backbone.tokenizer, spec.classnames, spec.templates)
        entry.publish(lambda tmp: (save_state(tmp / "head.safetensors", {"weight": weight}), {"stage": "heads"})[1])
    return load_state(entry.dir / "head.safetensors")["weight"]


def loader(dataset, batch_size: int, shuffle: bool = False, seed: int = 0, num_workers: int = 0) -> DataLoader:
    from neulig.data.base import TensorImages, collate_batched

    generator = torch.Generator().manual_seed(seed) if shuffle else None
    collate = collate_batched if isinstance(dataset, TensorImages) else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=collate,
                      num_workers=num_workers, persistent_workers=num_workers > 0)


def expert_entry(backbone: Backbone, dataset: LoadedDataset, data_cfg: dict, ft_cfg: dict, seed: int,
                 cache_dir: Path) -> CacheEntry:
    key = config_hash("expert", backbone.key, dataset_key(dataset, data_cfg), ft_cfg, seed)
    return CacheEntry(cache_dir, "experts", key)


def finetune_expert(backbone: Backbone, dataset: LoadedDataset, head: Tensor, data_cfg: dict, ft_cfg: dict,
                    trainer_cfg: dict, seed: int, cache_dir: Path, callbacks: list | None = None) -> tuple[StateDict, str]:
    """Fine-tune the image encoder on ``dataset`` with its frozen head (FinetuneModule), cached."""
    import copy

    import lightning as L

    from neulig.lit.finetune import FinetuneModule

    speed_knobs = ("compile", "channels_last")  # how fast, not what is trained: not part of the cache key
    entry = expert_entry(backbone, dataset, data_cfg, {k: v for k, v in ft_cfg.items() if k not in speed_knobs},
                         seed, cache_dir)
    reference = backbone.visual.state_dict()
    if entry.load_meta(rebuild=f"retraining the {dataset.name} expert") is not None:
        try:
            return load_state(entry.dir / "encoder.safetensors", reference), entry.key
        except NeuligError as err:  # verified bytes but wrong layout: rebuild rather than trust it
            log.warning(f"{err}; retraining the {dataset.name} expert")
            import shutil

            shutil.rmtree(entry.dir, ignore_errors=True)
    L.seed_everything(seed, verbose=False)
    epochs = int(ft_cfg.get("epochs_per_dataset", {}).get(dataset.name, ft_cfg["epochs"]))
    trainer = L.Trainer(max_epochs=epochs, gradient_clip_val=ft_cfg.get("grad_clip", 1.0), callbacks=callbacks or [],
                        **trainer_kwargs(trainer_cfg))
    # under DDP each rank takes batch_size / world_size, so the global batch is the recipe's
    per_rank = max(1, int(ft_cfg["batch_size"]) // trainer.world_size)
    train_loader = loader(dataset.train, per_rank, shuffle=True, seed=seed, num_workers=ft_cfg.get("num_workers", 0))
    total_steps = epochs * math.ceil(len(dataset.train) / (per_rank * trainer.world_size))
    module = FinetuneModule(copy.deepcopy(backbone.visual).train(), head, ft_cfg["lr"], ft_cfg["weight_decay"],
                            min(ft_cfg["warmup_steps"], max(1, total_steps // 10)), total_steps,
                            stage_name=f"finetune/{dataset.name}", compile=ft_cfg.get("compile", False),
                            channels_last=ft_cfg.get("channels_last", False))
    start = time.time()
    log.info(f"fine-tuning the {backbone.name} encoder on {dataset.name}: {epochs} epochs, {total_steps} steps")
    try:
        trainer.fit(module, train_loader, loader(dataset.val, 256))
    except RuntimeError as err:  # e.g. an lr beyond float range makes AdamW's update overflow
        if "overflow" not in str(err):
            raise
        raise NeuligError(f"fine-tuning on {dataset.name} overflowed ({err}); lower model.finetune.lr "
                          f"(now {ft_cfg['lr']})") from err
    state = {k: v.detach().cpu().contiguous() for k, v in module.encoder.state_dict().items()}  # NCHW if channels_last
    if trainer.global_rank == 0:
        meta = {"stage": "experts", "dataset": dataset.name, "epochs": epochs, "steps": total_steps,
                "seconds": time.time() - start, "val_acc": float(trainer.callback_metrics.get("val/acc", float("nan")))}
        entry.publish(lambda tmp: (save_state(tmp / "encoder.safetensors", state), meta)[1])
    return state, entry.key


def trainer_kwargs(trainer_cfg: dict) -> dict:
    """Lightning Trainer arguments of the ``trainer`` group, plus neulig's quiet defaults."""
    from neulig.utils.log import quiet_lightning

    quiet_lightning()  # every Trainer is built from these kwargs, after lightning has been imported
    kwargs = {k: v for k, v in trainer_cfg.items() if k not in ("name",)}
    kwargs.setdefault("logger", False)
    kwargs.setdefault("enable_checkpointing", False)
    kwargs.setdefault("enable_model_summary", False)
    return kwargs


@torch.no_grad()
def encode(encoder: nn.Module, dataset, batch_size: int, device: torch.device) -> Tensor:
    """Raw image features [N, d] of ``encoder`` on ``dataset`` (eval mode, fixed order)."""
    encoder = encoder.to(device).eval()
    return torch.cat([encoder(x.to(device)).float().cpu() for x, _ in loader(dataset, batch_size)])


def expert_features(encoder: nn.Module, owner_key: str, dataset: LoadedDataset, data_cfg: dict, cache_dir: Path,
                    device: torch.device, batch_size: int = 256) -> dict[str, Tensor]:
    """Cached features of one frozen encoder on every split of ``dataset``: {split: [N, d]}."""
    entry = CacheEntry(cache_dir, "features", config_hash("features", owner_key, dataset_key(dataset, data_cfg)))
    if entry.load_meta() is None:
        feats = {split: encode(encoder, getattr(dataset, split), batch_size, device) for split in ("train", "val", "test")}
        entry.publish(lambda tmp: (save_state(tmp / "features.safetensors", feats), {"stage": "features"})[1])
    return load_state(entry.dir / "features.safetensors")


def view_generator(seed: int, dataset_name: str, view: int) -> torch.Generator:
    """The crop generator of one augmented view: seeded by (seed, dataset, view) and never by the
    expert, so every expert encodes exactly the same crops and their features stay aligned."""
    return torch.Generator().manual_seed(int(config_hash("view", seed, dataset_name, view), 16) % (2**63))


@torch.no_grad()
def encode_views(encoder: nn.Module, dataset, dataset_name: str, views: int, scale: tuple[float, float], seed: int,
                 batch_size: int, device: torch.device) -> Tensor:
    """Features [views * N, d] of ``views`` random resized crops of every image of ``dataset``
    (view-major: rows v*N .. (v+1)*N - 1 are view v of images 0 .. N-1). Each view's boxes are drawn
    for the whole split at once, so they depend on neither the expert nor the batch size."""
    from neulig.data.augment import crop_boxes, resized_crop

    encoder = encoder.to(device).eval()
    out = []
    for view in range(views):
        boxes = None
        for x, _ in loader(dataset, batch_size):
            if boxes is None:
                boxes = iter(crop_boxes(len(dataset), x.shape[-1], scale, (3 / 4, 4 / 3),
                                        view_generator(seed, dataset_name, view)).split(batch_size))
            out.append(encoder(resized_crop(x.to(device), next(boxes))).float().cpu())
    return torch.cat(out)


def view_features(encoder: nn.Module, owner_key: str, dataset: LoadedDataset, data_cfg: dict, views: int,
                  scale: tuple[float, float], seed: int, cache_dir: Path, device: torch.device,
                  batch_size: int = 256) -> Tensor:
    """Cached features of ``views`` augmented views of the train split (``encode_views``)."""
    scale = (float(scale[0]), float(scale[1]))
    entry = CacheEntry(cache_dir, "features", config_hash("views", owner_key, dataset_key(dataset, data_cfg),
                                                          views, scale, seed))
    if entry.load_meta() is None:
        feats = encode_views(encoder, dataset.train, dataset.name, views, scale, seed, batch_size, device)
        entry.publish(lambda tmp: (save_state(tmp / "views.safetensors", {"train": feats}),
                                   {"stage": "features", "views": views, "scale": list(scale)})[1])
    return load_state(entry.dir / "views.safetensors")["train"]
