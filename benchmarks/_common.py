"""Shared helpers of the benchmark scripts: repo import path, timing, tables, model configs."""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/x.py` puts benchmarks/, not the repo root, on sys.path
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

# --model NAME -> open_clip architecture, randomly initialised (pretrained: None): speed does not
# depend on the weights' values.
MODELS = {"tiny": "neulig-tiny", "rn50": "RN50", "vit_b32": "ViT-B-32", "vit_l14": "ViT-L-14"}


def model_cfg(name: str):
    """The typed model config of conf/model/<name>.yaml, randomly initialised (``pretrained: null``)."""
    from hydra import compose, initialize_config_dir

    from neulig.config import load, register

    register()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return load(compose("config", overrides=[f"model={name}", "model.pretrained=null"])).model


def load_random_backbone(name: str):
    """A randomly initialised backbone through the pipeline's own loader (no weights file, no cache)."""
    from neulig.stages.backbone import load_backbone

    return load_backbone(model_cfg(name), "weights", REPO / "outputs" / "cache")


def image_size(visual: torch.nn.Module) -> int:
    size = getattr(visual, "image_size", 224)
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch sees no CUDA device")
    return device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def epoch_clock():
    """A Lightning callback recording each training epoch's wall time (whatever runs inside the epoch,
    evaluations included), synchronised with the module's device."""
    import lightning as L

    class EpochClock(L.Callback):
        def __init__(self):
            self.times: list[float] = []

        def on_train_epoch_start(self, trainer, module):
            self._start = time.perf_counter()

        def on_train_epoch_end(self, trainer, module):
            sync(module.device)
            self.times.append(time.perf_counter() - self._start)

    return EpochClock()


def time_fn(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall seconds of ``fn`` over ``repeats`` calls after ``warmup`` calls (synchronised)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_interleaved(fns: dict[str, Callable[[], object]], device: torch.device, warmup: int,
                     repeats: int) -> dict[str, float]:
    """Median wall seconds of each function, timed in alternation (round robin) so that load from
    other processes on a shared machine hits every contender alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync(device)
            times[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def table(header: list[str], rows: list[list], fmt: str = "{:>12}") -> str:
    """A small fixed-width text table."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(str(h).rjust(w) for h, w in zip(header, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(c).rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def verdict(value: float, target: float, smaller_is_better: bool) -> str:
    ok = value <= target if smaller_is_better else value >= target
    return f"{'meets' if ok else 'MISSES'} target {'<=' if smaller_is_better else '>='} {target:g}x"
