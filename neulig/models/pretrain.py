"""Offline pretraining of the tiny backbone: contrastive image-caption learning on a generated corpus.

Captions come from a finite concept vocabulary (class name x template), so each step contrasts every
image against one caption per concept (a multi-positive CLIP loss, as in UniCL, arXiv 2204.03610):
duplicated captions in a batch are never treated as negatives of each other. The loss is symmetric
as CLIP's (arXiv 2103.00020): image -> caption cross-entropy over the concepts, plus caption -> image
cross-entropy over the batch with the caption's images as uniform positives. Image and text towers
are both trained; images get a random style per batch (:class:`neulig.data.pretraining.Stylist`).

As CLIP: the temperature is learned as ``logit_scale`` = log(1/T), initialised at log(1/0.07) by
open_clip, clamped to [0, log 100] after every step and never weight-decayed; nor are biases, norms
and embeddings (AdamW parameter groups). Schedule: linear warm-up then cosine decay to 0.
"""
from __future__ import annotations

import math
import sys

import torch
import torch.nn.functional as F
from torch import nn

from neulig.data.base import CLIP_MEAN, CLIP_STD
from neulig.data.pretraining import Stylist, pretraining_corpus
from neulig.utils.log import log

MAX_LOGIT_SCALE = math.log(100.0)


def pretrain_spec(model, seed: int | None = None) -> dict:
    """Everything that determines the pretrained weights of ``model`` (a ``ModelConfig`` with
    ``pretrained: neulig``) for ``seed`` (default ``model.pretrain.seed``): the cache key and the shipped
    file's header."""
    from dataclasses import asdict

    from neulig.data.pretraining import CORPUS_VERSION

    pretrain = {**asdict(model.pretrain), "seed": model.pretrain.seed if seed is None else seed}
    return {"arch": model.arch, "pretrain": pretrain, "image_size": model.image_size, "corpus": CORPUS_VERSION}


def no_decay(name: str, param: nn.Parameter) -> bool:
    """Biases, norm gains, embeddings and the logit scale are not weight-decayed (CLIP's recipe)."""
    return param.ndim < 2 or "embedding" in name or "logit_scale" in name


def param_groups(model: nn.Module, weight_decay: float, lr: float | None = None,
                 scale_lr: float = 1.0) -> list[dict]:
    """AdamW groups: decayed weights, undecayed ones and, with ``scale_lr`` != 1, the logit scale alone
    at ``scale_lr`` times the base ``lr`` (a short schedule moves log(1/T) at most about lr per step)."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    own = scale_lr != 1.0 and lr is not None
    groups = [{"params": [p for n, p in params if not no_decay(n, p)], "weight_decay": weight_decay},
              {"params": [p for n, p in params if no_decay(n, p) and not (own and n == "logit_scale")],
               "weight_decay": 0.0}]
    if own:
        groups.append({"params": [p for n, p in params if n == "logit_scale"], "weight_decay": 0.0,
                       "lr": lr * scale_lr})
    return groups


def caption_tokens(tokenizer, concepts: list[str], templates: list[tuple[str, ...]]) -> torch.Tensor:
    """Every caption of every concept, tokenised once: [concepts, max templates, L] (short lists cycled)."""
    width = max(len(t) for t in templates)
    return torch.stack([tokenizer([t.format(name) for t in (list(templates[c]) * width)[:width]])
                        for c, name in enumerate(concepts)])


def multi_positive_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Symmetric multi-positive CLIP loss of image x concept-caption logits [B, C]: image -> caption
    cross-entropy, plus, for every concept present in the batch, caption -> image cross-entropy
    against the uniform distribution over that concept's images."""
    i2t = F.cross_entropy(logits, labels)
    positives = F.one_hot(labels, logits.shape[1]).t().float()  # [C, B]
    present = positives.sum(1) > 0
    target = positives[present] / positives[present].sum(1, keepdim=True)
    t2i = -(target * logits.t()[present].log_softmax(-1)).sum(-1).mean()
    return 0.5 * (i2t + t2i)


def pretrain_tiny(clip: nn.Module, tokenizer, steps: int, batch_size: int, lr: float, n_per_family: int, seed: int,
                  image_size: int, weight_decay: float = 0.1, warmup: float = 0.05, style: float = 0.5,
                  symmetric: bool = True, scale_lr: float = 10.0) -> dict:
    """Train ``clip`` in place (defaults: ``conf/model/tiny.yaml``); returns a summary (final loss, train
    accuracy, logit scale)."""
    torch.manual_seed(seed)
    corpus = pretraining_corpus(n_per_family, seed, size=image_size)
    stylist = Stylist(style)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    clip.train()
    optimizer = torch.optim.AdamW(param_groups(clip, weight_decay, lr, scale_lr), lr=lr)
    warmup_steps = max(1, int(warmup * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup_steps if s < warmup_steps
        else 0.5 * (1 + math.cos(math.pi * (s - warmup_steps) / max(1, steps - warmup_steps)))
    )
    generator = torch.Generator().manual_seed(seed)
    tokens = caption_tokens(tokenizer, corpus.concepts, corpus.templates)
    concepts = torch.arange(len(corpus.concepts))
    loss_value, acc = float("nan"), 0.0
    for step in range(steps):
        idx = torch.randint(len(corpus.labels), (batch_size,), generator=generator)
        x = (stylist(corpus.ink[idx], corpus.warp[idx], generator) - mean) / std
        labels = corpus.labels[idx]
        pick = torch.randint(tokens.shape[1], (len(concepts),), generator=generator)
        img = F.normalize(clip.encode_image(x), dim=-1)
        txt = F.normalize(clip.encode_text(tokens[concepts, pick]), dim=-1)
        logits = clip.logit_scale.exp() * img @ txt.t()
        loss = multi_positive_loss(logits, labels) if symmetric else F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(clip.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            clip.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        loss_value = loss.item()
        acc = float((logits.argmax(-1) == labels).float().mean())
        if (step + 1) % max(1, steps // 10) == 0:
            log.info(f"pretraining tiny backbone: step {step + 1}/{steps} loss {loss_value:.3f} acc {acc:.2f} "
                     f"logit scale {clip.logit_scale.exp().item():.1f}")
    clip.eval()
    return {"final_loss": loss_value, "final_train_acc": acc, "concepts": len(corpus.concepts),
            "logit_scale": float(clip.logit_scale.detach().exp())}


def main(argv: list[str] | None = None) -> None:
    """``python -m neulig.models.pretrain [--seed N] [overrides]``: pretrain with ``conf/model/tiny.yaml``
    (plus Hydra ``overrides``) and write the shipped file ``neulig/models/pretrained/<arch>_s<seed>.safetensors``."""
    import argparse
    import time
    from pathlib import Path

    from neulig.models.shipped import SHIPPED_DIR, save_shipped, shipped_path

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model.pretrain.steps=3000")
    parser.add_argument("--seed", type=int, default=0, help="pretraining seed (model.pretrain.seed)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (results differ with the count; the shipped file used 1)")
    parser.add_argument("--out", type=Path, default=SHIPPED_DIR, help="folder of the written file")
    args = parser.parse_args(argv)
    from neulig.config import compose, load
    from neulig.config.model import SHIPPED_PRETRAINING

    model = load(compose([*args.overrides, f"model.pretrain.seed={args.seed}"])).model
    if model.pretrained != SHIPPED_PRETRAINING:
        raise SystemExit(f"neulig: error: model={model.name} is not pretrained by neulig "
                         f"(model.pretrained={SHIPPED_PRETRAINING})")
    from dataclasses import asdict

    from neulig.models.backbone import create_quietly
    from neulig.models.openclip import open_clip
    from neulig.utils.cache import file_sha256

    torch.set_num_threads(args.threads)
    spec = pretrain_spec(model)
    clip = create_quietly(model.arch, None, args.seed)
    tokenizer = open_clip.get_tokenizer(model.arch)
    start = time.time()
    summary = pretrain_tiny(clip, tokenizer, image_size=model.image_size, **asdict(model.pretrain))
    seconds = time.time() - start
    path = save_shipped(clip, tokenizer, spec, shipped_path(spec, args.out),
                        {"summary": summary, "torch": torch.__version__, "threads": args.threads})
    print(f"{path}: {path.stat().st_size / 1e6:.2f} MB, sha256 {file_sha256(path)}, {seconds:.0f} s, "
          f"logit scale {summary['logit_scale']:.2f}, train acc {summary['final_train_acc']:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
