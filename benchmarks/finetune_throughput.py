"""Fine-tuning throughput (images/s): neulig's FinetuneModule step vs a plain fp32 PyTorch loop.

Variants (same encoder, random weights, a frozen random zero-shot head, synthetic inputs already on
the device, so that only the training step is timed):
  plain_fp32          the reference recipe as a plain loop: fp32, AdamW (decay / no-decay groups),
                      warm-up + cosine LambdaLR, cross-entropy, grad-norm clipping 1.0; with torch's
                      defaults, which let cuDNN run fp32 convolutions in TF32;
  plain_fp32_strict   the same loop with TF32 off for convolutions and matmuls (true fp32 arithmetic);
                      on an H100 RN50 it is the slower and therefore the more flattering baseline;
  plain_bf16_compile  the same loop under bf16 autocast with torch.compile of the whole classifier
                      (channels-last when the model's knob says so): what a hand-tuned loop reaches;
  neulig              ``FinetuneModule`` fitted by a Lightning Trainer with the ``trainer=gpu``
                      settings (bf16-mixed, 1 device; progress bar off) and gradient_clip_val 1.0, as
                      ``stages.finetune_expert`` builds it, with the model's ``finetune.compile`` /
                      ``finetune.channels_last`` knobs (conf/model/<model>.yaml; they act on CUDA only).
On CPU the neulig variant uses ``trainer=cpu`` (32-true) and plain_bf16_compile is skipped by default.

    python benchmarks/finetune_throughput.py                               # tiny, CPU
    python benchmarks/finetune_throughput.py --model vit_b32 --device cuda --steps 30
    python benchmarks/finetune_throughput.py --model rn50 --device cuda --steps 30

Issue targets on an H100, neulig / plain_fp32: >= 2.9x for vit_b32 and >= 4.8x for rn50.
"""
from __future__ import annotations

import argparse
import copy
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

TARGETS = {"vit_b32": 2.9, "rn50": 4.8}
BATCH = {"vit_l14": 64}
VARIANTS = ("plain_fp32", "plain_fp32_strict", "plain_bf16_compile", "neulig")


def knobs(model: str) -> dict:
    """finetune.* of conf/model/<model>.yaml (read with PyYAML: no Hydra needed on a bare GPU box)."""
    import yaml

    path = C.REPO / "conf" / "model" / f"{model}.yaml"
    cfg = yaml.safe_load(path.read_text()).get("finetune", {}) if path.exists() else {}
    return {"compile": cfg.get("compile", False), "channels_last": bool(cfg.get("channels_last", False)),
            "lr": float(cfg.get("lr", 1e-5)), "weight_decay": float(cfg.get("weight_decay", 0.1)),
            "grad_clip": float(cfg.get("grad_clip", 1.0)), "warmup_steps": int(cfg.get("warmup_steps", 500))}


class Classifier(nn.Module):
    def __init__(self, encoder: nn.Module, head_weight: torch.Tensor):
        super().__init__()
        from neulig.models.heads import ZeroShotHead

        self.encoder, self.head = encoder, ZeroShotHead(head_weight)

    def forward(self, x):
        return self.head(self.encoder(x))


def adamw(encoder: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    decay = [p for p in encoder.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in encoder.parameters() if p.requires_grad and p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr)


def tf32_settings() -> dict[str, object]:
    """torch's TF32 switches as they stand (the plain_fp32 baseline and neulig run under them)."""
    return {"cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision()}


class strict_fp32:
    """Context: no TF32 in cuDNN convolutions or CUDA matmuls (restored on exit)."""

    def __enter__(self):
        self.saved = (torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")

    def __exit__(self, *exc):
        torch.backends.cudnn.allow_tf32 = self.saved[0]
        torch.set_float32_matmul_precision(self.saved[1])


def run_plain(visual, head, x, y, k: dict, warmup: int, steps: int, device, fast: bool) -> float:
    """Seconds per step of a plain loop (fp32, or bf16 autocast + torch.compile when ``fast``)."""
    from neulig.lit.finetune import warmup_cosine

    model = Classifier(copy.deepcopy(visual), head).to(device).train()
    if fast and k["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = adamw(model.encoder, k["lr"], k["weight_decay"])
    total = warmup + steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, k["warmup_steps"], total))
    params = [p for p in model.parameters() if p.requires_grad]
    forward = torch.compile(model) if fast else model

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast):
            loss = F.cross_entropy(forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, k["grad_clip"])
        optimizer.step()
        scheduler.step()

    for _ in range(warmup):
        step()
    C.sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    C.sync(device)
    return (time.perf_counter() - start) / steps


class _Repeat:
    """An iterable of ``n`` copies of one on-device batch (Lightning accepts any sized iterable)."""

    def __init__(self, batch, n: int):
        self.batch, self.n = batch, n

    def __len__(self):
        return self.n

    def __iter__(self):
        for _ in range(self.n):
            yield self.batch


def run_neulig(visual, head, x, y, k: dict, warmup: int, steps: int, device, compile_knob, channels_last: bool) -> float:
    """Seconds per step of FinetuneModule + Lightning Trainer (timed between two batch-end hooks)."""
    import lightning as L

    from neulig.config.trainer import TrainerConfig
    from neulig.lit.finetune import FinetuneModule
    from neulig.lit.trainer import trainer_kwargs

    class Clock(L.Callback):
        def __init__(self):
            self.start = self.stop = None

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if batch_idx in (warmup - 1, warmup + steps - 1):
                C.sync(device)
                if batch_idx == warmup - 1:
                    self.start = time.perf_counter()
                else:
                    self.stop = time.perf_counter()

    total = warmup + steps
    module = FinetuneModule(copy.deepcopy(visual).train(), head, k["lr"], k["weight_decay"],
                            min(k["warmup_steps"], max(1, total // 10)), total, stage_name="finetune/bench",
                            compile=compile_knob, channels_last=channels_last)
    if device.type == "cuda":  # conf/trainer/gpu.yaml
        trainer_cfg = TrainerConfig(accelerator="gpu", devices=1, precision="bf16-mixed")
    else:  # conf/trainer/cpu.yaml
        trainer_cfg = TrainerConfig(accelerator="cpu", devices=1)
    kwargs = trainer_kwargs(trainer_cfg)
    kwargs.update(enable_progress_bar=False, max_steps=total, max_epochs=1, limit_val_batches=0,
                  num_sanity_val_steps=0)
    clock = Clock()
    trainer = L.Trainer(gradient_clip_val=k["grad_clip"], callbacks=[clock], **kwargs)
    trainer.fit(module, _Repeat((x, y), total))
    return (clock.stop - clock.start) / steps


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(C.MODELS), default="tiny")
    p.add_argument("--device", default="cpu", help="cpu, cuda, or auto")
    p.add_argument("--batch-size", type=int, default=0, help="0: 128 (64 for vit_l14)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (torch.compile compiles here)")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=None,
                   help="default: all on CUDA; plain_fp32 and neulig on CPU")
    p.add_argument("--compile", choices=("config", "on", "off"), default="config",
                   help="neulig's finetune.compile: from conf/model/<model>.yaml, or forced")
    p.add_argument("--channels-last", choices=("config", "on", "off"), default="config",
                   help="finetune.channels_last for neulig and plain_bf16_compile")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = C.resolve_device(args.device)
    from neulig.utils.log import quiet_libraries

    quiet_libraries()
    import warnings

    warnings.filterwarnings("ignore", message=".*validation_step.*val_dataloader.*")
    k = knobs(args.model)
    if args.compile != "config":
        k["compile"] = args.compile == "on"
    if args.channels_last != "config":
        k["channels_last"] = args.channels_last == "on"
    variants = args.variants or (list(VARIANTS) if device.type == "cuda" else ["plain_fp32", "neulig"])
    batch = args.batch_size or BATCH.get(args.model, 128)
    torch.manual_seed(args.seed)
    backbone = C.load_random_backbone(args.model)
    visual = backbone.visual.cpu().train()
    size = C.image_size(visual)
    head = F.normalize(torch.randn(args.classes, backbone.feature_dim), dim=-1) * 100.0
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, args.classes, (batch,), device=device)
    print(f"finetune_throughput: model={args.model} ({backbone.arch}, random init), batch={batch}, image={size}px, "
          f"device={C.device_name(device)}, steps={args.steps} after {args.warmup} warm-up; "
          f"neulig knobs: compile={k['compile']}, channels_last={k['channels_last']} (CUDA only)")
    tf32 = tf32_settings()
    print("TF32 settings: " + ", ".join(f"{key}={value}" for key, value in tf32.items())
          + " (plain_fp32_strict turns both off)")
    seconds = {}
    for name in variants:
        if name == "neulig":
            seconds[name] = run_neulig(visual, head, x, y, k, args.warmup, args.steps, device, k["compile"],
                                       k["channels_last"])
        elif name == "plain_fp32_strict":
            with strict_fp32():
                seconds[name] = run_plain(visual, head, x, y, k, args.warmup, args.steps, device, fast=False)
        else:
            seconds[name] = run_plain(visual, head, x, y, k, args.warmup, args.steps, device,
                                      fast=name == "plain_bf16_compile")
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print(f"  {name}: {batch / seconds[name]:.1f} images/s", flush=True)
    base = seconds.get("plain_fp32")
    rows = [[name, f"{s * 1e3:.2f}", f"{batch / s:.1f}", f"{base / s:.2f}x" if base else "-"]
            for name, s in seconds.items()]
    print(C.table(["variant", "ms/step", "images/s", "vs plain_fp32"], rows))
    ratios = {name: base / s for name, s in seconds.items()} if base else {}
    for name, r in ratios.items():
        if name != "plain_fp32":
            target = TARGETS.get(args.model) if name == "neulig" and device.type == "cuda" else None
            print(f"RATIO {name}/plain_fp32 images/s: {r:.2f}x" + (f" ({C.verdict(r, target, False)})" if target else ""))
    if "neulig" in seconds and "plain_fp32_strict" in seconds:
        print(f"RATIO neulig/plain_fp32_strict images/s: {seconds['plain_fp32_strict'] / seconds['neulig']:.2f}x")
    if "neulig" in seconds and "plain_bf16_compile" in seconds:
        print(f"neulig / plain_bf16_compile images/s: {seconds['plain_bf16_compile'] / seconds['neulig']:.2f}")
    return {"model": args.model, "device": str(device), "batch": batch, "seconds_per_step": seconds,
            "images_per_s": {n: batch / s for n, s in seconds.items()}, "ratios": ratios, "tf32": tf32,
            "target": TARGETS.get(args.model) if device.type == "cuda" else None}


if __name__ == "__main__":
    main()
