"""The lines every run starts with: the device and precision it trains in, and a warning when a real
backbone is about to run on the CPU (with a rough expected time) or a GPU sits unused."""
from __future__ import annotations

import os

# forward GFLOPs of the image tower per 224 px image (open_clip's model profiles, rounded)
IMAGE_GFLOPS = {"RN50": 6.2, "RN101": 9.9, "ViT-B-32": 4.4, "ViT-B-16": 17.6, "ViT-L-14": 81.1}
# sustained fp32 GFLOP/s per CPU core assumed by the estimate (a modern x86 core with AVX2, order of magnitude)
CPU_CORE_GFLOPS = 25.0
TRAIN_FACTOR = 3.0  # forward + backward ~ 3 forwards


def device_lines(config) -> list[str]:
    """``device: ...`` and, where they apply, ``warning: ...`` lines for the run of ``config``."""
    import torch

    trainer, model = config.trainer, config.model
    accelerator, precision = trainer.resolved_accelerator(), trainer.resolved_precision()
    if accelerator == "gpu":
        where = f"cuda ({torch.cuda.get_device_name(0)}, {trainer.devices} device(s))"
    else:
        where = f"cpu ({torch.get_num_threads()} threads, {trainer.devices} process(es))"
    lines = [f"device: {where}, precision {precision} (trainer.accelerator={trainer.accelerator}, "
             f"trainer.precision={trainer.precision})"]
    if accelerator == "cpu" and torch.cuda.is_available():
        lines.append(f"warning: a GPU ({torch.cuda.get_device_name(0)}) is present but unused "
                     f"(trainer.accelerator={trainer.accelerator}); run with trainer=auto or trainer=gpu to use it")
    gflops = IMAGE_GFLOPS.get(model.arch.removesuffix("-quickgelu"))
    if accelerator == "cpu" and gflops is not None:
        lines.append(cpu_warning(model, config.data, gflops))
    return lines


def cpu_warning(model, data, gflops: float) -> str:
    """The warning for a real backbone on the CPU, with the expected time (a FLOP-count estimate)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    train_s = TRAIN_FACTOR * gflops / (cores * CPU_CORE_GFLOPS)  # seconds per training image
    forward_s = train_s / TRAIN_FACTOR
    epochs = {d: int((model.finetune.epochs_per_dataset or {}).get(d, model.finetune.epochs)) for d in data.names}
    cap = data.sizes.train if data.sizes is not None else None
    if cap is not None:
        total_s = sum(epochs.values()) * cap * train_s
        expected = f"fine-tuning {len(epochs)} experts of {cap} images takes about {duration(total_s)}"
    else:
        expected = (f"fine-tuning takes about {1000 * train_s / 60:.0f} min per 1000 images per epoch "
                    f"({sum(epochs.values())} dataset-epochs in all)")
    return (f"warning: {model.arch} runs on the CPU ({cores} cores): {expected}, and features about "
            f"{1000 * forward_s / 60:.0f} min per 1000 images (estimate: {gflops} GFLOPs per image at "
            f"{CPU_CORE_GFLOPS:.0f} GFLOP/s per core); on a GPU use trainer=auto")


def duration(seconds: float) -> str:
    """``40 s``, ``12 min`` or ``3.5 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"
