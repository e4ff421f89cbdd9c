"""Stage 3, experts: the image encoder fine-tuned on each dataset with its frozen head, or your own."""
from __future__ import annotations

import copy
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from torch import Tensor

from neulig.config.model import FinetuneConfig, ModelConfig
from neulig.config.trainer import TrainerConfig
from neulig.data.base import LoadedDataset
from neulig.errors import NeuligError
from neulig.merging.state_dict import StateDict
from neulig.models.backbone import encoder_layout
from neulig.stages.backbone import Backbone
from neulig.stages.stage import CachedStage
from neulig.utils.cache import config_hash
from neulig.utils.log import log

FINETUNED = CachedStage("experts", "expert", "encoder.safetensors")
SPEED_KNOBS = ("compile", "channels_last")  # how fast, not what is trained: not part of the cache key


@dataclass(frozen=True)
class Expert:
    """One dataset's expert: its image-encoder weights and the cache key its features are keyed by."""

    dataset: str
    state: StateDict
    key: str


@dataclass(frozen=True)
class GivenExperts:
    """The experts a user gave (``model.experts``, ``model.experts_dir``) and the base weights to start
    from instead of the configured ones (``model.weights``, or the base the experts' folder holds)."""

    experts: dict[str, Expert]
    base: Path | None


def user_experts(model: ModelConfig, names: list[str], cache_dir: Path) -> GivenExperts:
    """The experts given as files, folders or hub repositories (``hf://``, fetched into the hub cache when
    absent), in any format (``models.expert_sources``), checked against
    the architecture before any training; keyed by their content's SHA-256 only, so their cached
    features follow the content. Entries of ``model.experts`` win over ``model.experts_dir``'s."""
    from neulig.models.expert_sources import discover_experts, projection_of, read_visual
    from neulig.models.experts import expert_files, missing_file_message
    from neulig.models.hub_experts import with_local_folders
    from neulig.utils.cache import content_digest

    model = with_local_folders(model, names)  # hf:// experts and base: their folders in the hub cache
    base = Path(model.weights).expanduser() if model.weights else None
    where: dict[str, str] = {}
    files: dict[str, Path] = {}
    if model.experts_dir:
        found = discover_experts(model.experts_dir, names, model.experts_dir_model)
        log.info(f"experts_dir {model.experts_dir}: {found.layout} layout, {len(found.experts)} experts")
        files.update(found.experts)
        where.update({d: f"{p} (model.experts_dir)" for d, p in found.experts.items()})
        base = base or found.base
    given = expert_files(model.experts, names)
    files.update(given)
    where.update({d: f"{p} (model.experts.{d})" for d, p in given.items()})
    message = missing_file_message(files)
    if message:
        raise NeuligError(message)
    layout = encoder_layout(model.arch) if files else {}
    projection = projection_of(base, layout, model.arch)  # read from the base once, if any expert needs it
    out = {}
    for name, path in files.items():
        state = read_visual(path, layout, model.arch, base_projection=projection, where=where[name])
        digest = content_digest(path, cache_dir)
        log.info(f"expert for {name}: {path} (sha256 {digest[:12]}), not fine-tuned")
        out[name] = Expert(name, state, config_hash("expert-file", digest))
    return GivenExperts(out, base)


def finetune_expert(backbone: Backbone, dataset: LoadedDataset, head: Tensor, data_key: dict,
                    recipe: FinetuneConfig, trainer: TrainerConfig, seed: int, cache_dir: Path,
                    callbacks: list, eval_batch_size: int) -> Expert:
    """Fine-tune the image encoder on ``dataset`` with its frozen head (FinetuneModule), cached;
    ``eval_batch_size`` (``eval.batch_size``, speed only: not in the cache key) batches its validation."""
    recipe_key = {k: v for k, v in asdict(recipe).items() if k not in SPEED_KNOBS}
    parts = (backbone.key, data_key, recipe_key, seed, numerics_key(trainer))
    product = FINETUNED.fetch(
        cache_dir, parts,
        lambda: finetune(backbone, dataset, head, recipe, trainer, seed, callbacks, eval_batch_size,
                         scratch=Path(cache_dir) / "scratch" / FINETUNED.folder / FINETUNED.key(*parts)),
        reference=backbone.visual.state_dict(), rebuild=f"retraining the {dataset.name} expert",
        label=f"the {dataset.name} expert", exclusive=trainer.devices == 1)  # DDP ranks must train together
    return Expert(dataset.name, product.tensors, product.key)


def numerics_key(trainer: TrainerConfig) -> dict:
    """What in the trainer changes an expert's numbers: the device kind and the precision (bf16-mixed on a
    GPU vs 32-true on the CPU). Not the device count: DDP keeps the recipe's global batch (each rank takes
    batch_size / world_size), so a DDP run and a one-device run share their experts."""
    return {"accelerator": trainer.resolved_accelerator(), "precision": trainer.resolved_precision()}


def finetune(backbone: Backbone, dataset: LoadedDataset, head: Tensor, recipe: FinetuneConfig,
             trainer_cfg: TrainerConfig, seed: int, callbacks: list, eval_batch_size: int,
             scratch: Path | None = None) -> tuple[StateDict, dict]:
    """One fine-tuning run: AdamW, warm-up + cosine, gradient clipping (the paper's recipe shape). On one
    device it is preemption-safe: a SIGTERM saves its state in ``scratch``, where the rerun resumes
    (``lit.preemption``)."""
    import lightning as L
    import torch

    from neulig.data.loaders import loader
    from neulig.lit.finetune import FinetuneModule
    from neulig.lit.preemption import Preemption, ResumableSampler, deferred_sigterm, load_state
    from neulig.lit.trainer import trainer_kwargs
    from neulig.utils.cores import loader_workers

    L.seed_everything(seed, verbose=False)
    epochs = int((recipe.epochs_per_dataset or {}).get(dataset.name, recipe.epochs))
    scratch = scratch if trainer_cfg.devices == 1 else None  # DDP ranks are not resumed one by one
    saved = load_state(scratch) if scratch is not None else None
    preemption = []
    if scratch is not None:
        sampler = ResumableSampler(len(dataset.train), torch.Generator().manual_seed(seed),
                                   *((saved["sampler"], saved["batches"] * recipe.batch_size) if saved else ()))
        preemption = [Preemption(scratch, sampler, recipe.batch_size, saved)]
    trainer = L.Trainer(max_epochs=epochs - (saved["epoch"] if saved else 0), gradient_clip_val=recipe.grad_clip,
                        callbacks=[*callbacks, *preemption], **trainer_kwargs(trainer_cfg))
    # under DDP each rank takes batch_size / world_size, so the global batch is the recipe's
    per_rank = max(1, recipe.batch_size // trainer.world_size)
    train_loader = loader(dataset.train, per_rank, shuffle=True, seed=seed, num_workers=loader_workers(recipe.num_workers),
                          sampler=preemption[0].sampler if preemption else None)
    total_steps = epochs * math.ceil(len(dataset.train) / (per_rank * trainer.world_size))
    module = FinetuneModule(copy.deepcopy(backbone.visual).train(), head, recipe.lr, recipe.weight_decay,
                            min(recipe.warmup_steps, max(1, total_steps // 10)), total_steps,
                            stage_name=f"finetune/{dataset.name}", compile=recipe.compile,
                            channels_last=recipe.channels_last)
    start = time.time()
    log.info(f"fine-tuning the {backbone.name} encoder on {dataset.name}: {epochs} epochs, {total_steps} steps")
    if saved:
        module.encoder.load_state_dict(saved["encoder"])
        log.info(f"resuming the {dataset.name} expert from step {saved['step']} (state saved in {scratch})")
    try:
        with deferred_sigterm():
            val_loader = loader(dataset.val, eval_batch_size, num_workers=loader_workers(recipe.num_workers),
                                persistent=True)
            fit(trainer, module, train_loader, val_loader, dataset.name, scratch)
    except RuntimeError as err:  # e.g. an lr beyond float range makes AdamW's update overflow
        if "overflow" not in str(err):
            raise
        raise NeuligError(f"fine-tuning on {dataset.name} overflowed ({err}); lower model.finetune.lr "
                          f"(now {recipe.lr})") from err
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.encoder.state_dict().items()}  # NCHW if channels_last
    meta = {"dataset": dataset.name, "epochs": epochs, "steps": total_steps, "seconds": time.time() - start,
            "val_acc": float(trainer.callback_metrics.get("val/acc", float("nan")))}
    return state, meta


def fit(trainer, module, train_loader, val_loader, name: str, scratch: Path | None) -> None:
    """``trainer.fit``; a SIGTERM ends it at a step's end, with its state saved in ``scratch``."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    if trainer.max_epochs <= 0:  # stopped after its last step: nothing left to train
        return
    try:
        trainer.fit(module, train_loader, val_loader)
    except SIGTERMException:
        log.warning(f"fine-tuning on {name} stopped by SIGTERM" + (f"; its state is in {scratch}, where a rerun "
                                                                 "resumes" if scratch is not None else ""))


def prepare_experts(config, backbones: dict, origins: dict, datasets: dict[str, LoadedDataset],
                    heads: dict[str, Tensor], given: GivenExperts, callbacks: tuple) -> dict[str, Expert]:
    """Every dataset's expert: the user's file when ``model.experts`` names one, else fine-tuned (cached)
    from the backbone of the dataset's origin."""
    from neulig.stages.datasets import data_key

    return {d: given.experts[d] if d in given.experts else finetune_expert(
        backbones[origins[d]], datasets[d], heads[d], data_key(config, datasets[d]), config.model.finetune,
        config.trainer, config.seed, config.paths.cache_dir, callbacks, config.eval.batch_size) for d in datasets}
