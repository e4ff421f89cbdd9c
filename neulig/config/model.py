"""Schema of ``conf/model/``: the backbone, how experts are fine-tuned from it, and where they come from."""
from dataclasses import dataclass
from typing import Any, List, Optional

from omegaconf import MISSING

from neulig.config.fields import ConfigError, mapping, non_negative, option, positive

# the offline pretraining of neulig's own tiny backbone (``pretrained: neulig``)
SHIPPED_PRETRAINING = "neulig"


@dataclass
class PretrainConfig:
    """Offline contrastive pretraining of the tiny backbone on generated image-caption pairs."""

    steps: int = positive()
    batch_size: int = positive()
    lr: float = positive()
    scale_lr: float = positive()  # the logit scale's lr, as a multiple of lr
    weight_decay: float = non_negative()  # not on biases, norms, embeddings or the logit scale
    warmup: float = option(MISSING, low=0.0, high=1.0)  # fraction of the steps
    style: float = non_negative()  # strength of the random image styles; 0: plain ink
    symmetric: bool = MISSING  # add CLIP's caption -> image term to the image -> caption one
    n_per_family: int = positive()  # generated images per concept family
    seed: int = MISSING


@dataclass
class FinetuneConfig:
    """How each expert is fine-tuned from the backbone (AdamW, warm-up + cosine, gradient clipping)."""

    epochs: int = positive()
    batch_size: int = positive()
    lr: float = positive()
    weight_decay: float = non_negative()
    warmup_steps: int = non_negative()
    grad_clip: float = non_negative()  # 0: no clipping
    num_workers: int = non_negative()
    epochs_per_dataset: Any = mapping(int, "{dataset: epochs}")  # overrides `epochs` per dataset
    compile: bool = False  # CUDA only: torch.compile of the encoder (speed; not in the expert cache key)
    channels_last: bool = False  # CUDA only: NHWC weights and inputs (speed; not in the cache key)

    def check(self, prefix: str) -> None:
        for name, epochs in (self.epochs_per_dataset or {}).items():
            if epochs < 1:
                raise ConfigError(f"{prefix}epochs_per_dataset.{name}", epochs, "an integer >= 1")


@dataclass
class ModelConfig:
    """An open_clip backbone: ``pretrained`` is a tag whose weights lie in (or are fetched into) ``paths.weights_dir``,
    ``neulig`` (the tiny backbone's own offline pretraining, ``pretrain``), or null (random init)."""

    name: str = MISSING
    arch: str = MISSING
    pretrained: Optional[str] = MISSING
    image_size: int = positive()
    finetune: FinetuneConfig = MISSING
    pretrain: Optional[PretrainConfig] = None
    # diverse-origin experts: starting checkpoints cycled over the datasets (pretraining seeds when
    # pretrained=neulig, pretrained tags otherwise)
    origins: Optional[List[str]] = None
    # your own fine-tuned experts, {dataset: path}: an open_clip .safetensors/.pt file, a pickled
    # task-vectors encoder, or a Hugging Face CLIP folder (docs/checkpoints.md)
    experts: Any = mapping(str, "{dataset: checkpoint file or folder}")
    # a folder of experts in the task-vectors or FusionBench layout, or hf://<org>/<prefix>: FusionBench's
    # experts on the hub, <org>/<prefix>_<task> (neulig/models/hub_experts.py)
    experts_dir: Optional[str] = None
    experts_dir_model: Optional[str] = None  # the model folder / base name inside experts_dir when it holds several
    weights: Optional[str] = None  # the base weights (any of those formats, or hf://<org>/<name>) instead of <arch>_<tag>
    # fetch what is missing (pretrained weights into paths.weights_dir, hf:// experts and base into the hub
    # cache); false forbids fetching, as HF_HUB_OFFLINE=1 does
    download: bool = True
    # pretrained=neulig: load the pretraining shipped with the package when its recorded recipe is this
    # one (neulig/models/shipped.py); false: always pretrain (cached)
    use_shipped: bool = True
    init_seed: int = 0  # seed of the random initialisation when pretrained=null

    def check(self, prefix: str) -> None:
        if self.pretrained == SHIPPED_PRETRAINING and self.pretrain is None:
            raise ConfigError(f"{prefix}pretrain", None, f"required when {prefix}pretrained={SHIPPED_PRETRAINING}")
        if self.origins is not None:
            if len(self.origins) == 0:
                raise ConfigError(f"{prefix}origins", [], "null or a non-empty list of starting checkpoints")
            if self.pretrained == SHIPPED_PRETRAINING and not all(_is_int(o) for o in self.origins):
                raise ConfigError(f"{prefix}origins", self.origins, "pretraining seeds (integers) for this backbone")
            if self.pretrained is None:
                raise ConfigError(f"{prefix}origins", self.origins,
                                  f"null when {prefix}pretrained=null (a random init has one origin)")
            for given in ("weights", "experts_dir"):
                if getattr(self, given):
                    raise ConfigError(f"{prefix}origins", self.origins, f"null with {prefix}{given} (the given weights "
                                      "are one origin)")
        self.check_hub_names(prefix)

    def check_hub_names(self, prefix: str) -> None:
        """Every ``hf://`` value names a repository ``<org>/<name>``."""
        from neulig.config.hub_names import is_hub, syntax_problem

        named = {f"{prefix}weights": self.weights, f"{prefix}experts_dir": self.experts_dir,
                 **{f"{prefix}experts.{d}": p for d, p in (self.experts or {}).items()}}
        for name, value in named.items():
            if is_hub(value) and syntax_problem(value):
                raise ConfigError(name, value, syntax_problem(value))
        if is_hub(self.experts_dir) and not self.weights:  # FusionBench's experts carry no visual projection
            raise ConfigError(f"{prefix}weights", None, f"the experts' base when {prefix}experts_dir=hf://...: "
                              "e.g. hf://openai/clip-vit-base-patch32 (the experts' projection comes from it)")
        if is_hub(self.experts_dir) and self.experts_dir_model:
            raise ConfigError(f"{prefix}experts_dir_model", self.experts_dir_model,
                              f"null with {prefix}experts_dir=hf://... (the prefix names the base)")


def _is_int(value: str) -> bool:
    try:
        int(value)
    except ValueError:
        return False
    return True

