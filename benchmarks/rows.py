"""The rows of ``benchmarks/all.py``: for each measurement, the script that measures it, its arguments
sized for the device (full size first, cheaper sizes after), and how its result becomes one table row.

The measuring code lives in the scripts (each has ``main(argv) -> dict``); a row here only chooses the
arguments and reads the returned dict into a typed :class:`Row`.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Plan:
    """One way to run a row: the script's arguments and their nominal wall seconds on the device."""

    argv: tuple[str, ...]
    seconds: float
    cut: str = ""  # "" at the row's full size, else what this size leaves out


@dataclass(frozen=True)
class Summary:
    """What a row reads from its script's result."""

    figure: str  # the figure, with its value
    contenders: tuple[tuple[str, str], ...]  # (who, value), measured side by side in the same run
    ratio: float | None
    ratio_of: str  # what the ratio divides, e.g. "plain / merged"
    goal: str
    met: bool | None  # None: no goal on this device
    extrapolated: str = ""  # how the figure goes beyond what was measured ("" where it does not)


@dataclass(frozen=True)
class Row:
    """One line of the table (JSON: ``dataclasses.asdict``)."""

    name: str
    figure: str
    contenders: tuple[tuple[str, str], ...]
    ratio: float | None
    ratio_of: str
    goal: str
    met: bool | None
    status: str  # measured | measured (reduced: ...) | extrapolated (...) | not available (...) | failed (...) | ...
    command: str
    seconds: float

    @classmethod
    def of(cls, name: str, summary: Summary, plan: Plan, command: str, seconds: float) -> Row:
        notes = "; ".join(n for n in (summary.extrapolated, f"reduced: {plan.cut}" if plan.cut else "") if n)
        status = ("extrapolated" if summary.extrapolated else "measured") + (f" ({notes})" if notes else "")
        return cls(name, summary.figure, summary.contenders, summary.ratio, summary.ratio_of, summary.goal,
                   summary.met, status, command, seconds)

    @classmethod
    def empty(cls, name: str, status: str, command: str = "", seconds: float = 0.0) -> Row:
        """A row that measured nothing (not on this device, not available, failed)."""
        return cls(name, "-", (), None, "", "-", None, status, command, seconds)


@dataclass(frozen=True)
class Context:
    """What every row's arguments may depend on."""

    device: str  # cpu | cuda
    root: Path  # paths.root_dir of the rows that run the pipeline's cached stages
    threads: int  # torch CPU threads passed to the scripts (0: their default)

    def thread_args(self) -> tuple[str, ...]:
        return ("--threads", str(self.threads)) if self.threads else ()


@dataclass(frozen=True)
class Bench:
    """A row of the table: the script it runs and how it reads the script's result."""

    name: str
    script: str  # benchmarks/<script>.py
    what: str  # one line for --help and the README
    plans: Callable[[Context], list[Plan]]  # full size first, then cheaper sizes
    smoke: Callable[[Context], Plan]  # the tiniest size, for the tests
    summarise: Callable[[dict, Context], Summary]
    devices: tuple[str, ...] = ("cpu", "cuda")
    optional: bool = False  # the script may be absent (the row then says "not available")

    def command(self, plan: Plan) -> str:
        """The command that reproduces this row alone, from the repository root."""
        return shlex.join(["python", f"benchmarks/{self.script}.py", *plan.argv])

    def path(self) -> Path:
        return REPO / "benchmarks" / f"{self.script}.py"


def rel(path: Path) -> str:
    """``path`` relative to the repository root where it is inside it (commands read from the root)."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def x(value: float) -> str:
    return f"{value:.2f}x"


# ---- merged per-batch inference ------------------------------------------------------------------


def merge_plans(c: Context) -> list[Plan]:
    model = ("--model", "vit_b32", "--device", "cuda") if c.device == "cuda" else ("--model", "tiny")
    base = (*model, "--experts", "2", "3", "4", "5", "6", "7", *c.thread_args())
    return [Plan(base, 40 if c.device == "cuda" else 45), Plan((*base, "--repeats", "5"), 20, "5 repeats, not 15")]


def merge_summary(r: dict, c: Context) -> Summary:
    per_n = {int(n): v for n, v in r["per_n"].items()}
    key = 7 if r["model"] == "vit_b32" else 4
    n = key if key in per_n else max(per_n)
    v = per_n[n]
    ratios = [p["ratio"] for p in per_n.values()]
    return Summary(f"{r['model']} N={n}: merged/plain {x(v['ratio'])} (N={min(per_n)}..{max(per_n)}: "
                   f"{min(ratios):.2f}-{max(ratios):.2f}x)",
                   (("plain forward", f"{v['plain_s'] * 1e3:.2f} ms"), ("merged forward", f"{v['merged_s'] * 1e3:.2f} ms")),
                   v["ratio"], "merged / plain", f"<= {v['target']:g}x" if v["target"] else "-",
                   v["ratio"] <= v["target"] if v["target"] else None)


MERGE = Bench("merge_inference", "merge_inference",
              "merged per-batch inference vs a plain forward, N = 2..7 (ViT-B/32 on cuda, tiny on cpu)",
              merge_plans,
              lambda c: Plan(("--experts", "2", "--batch-size", "2", "--warmup", "0", "--repeats", "1",
                              "--threads", "1"), 2),
              merge_summary)


# ---- Portland on cached features vs the reference loop -------------------------------------------

# the cheapest whole pipeline (as tests/conftest.py FAST_RUN): random-init backbone, two small datasets
TINY_RUN = ("model.pretrained=null", "data.datasets=[digits,shapes]", "model.finetune.epochs=1",
            "data.sizes.train=64", "data.sizes.val=32", "data.sizes.test=32", "merge.global_epochs=2")


def overrides(*items: str) -> tuple[str, ...]:
    return tuple(a for o in items for a in ("-o", o))


def portland_plans(c: Context) -> list[Plan]:
    gpu = overrides("trainer=gpu") if c.device == "cuda" else ()
    base = ("--root", rel(c.root / "embedded"), *gpu, *c.thread_args())
    return [Plan(("--epochs", "5", *base), 150 if c.device == "cuda" else 90),
            Plan(("--epochs", "2", *base), 60, "2 epochs, not 5")]


def portland_summary(r: dict, c: Context) -> Summary:
    """The one trainer against the reference loop (speed, equal accuracy) and against a plain PyTorch loop
    on the same cached features (step time, for one combination and for all combinations of a k)."""
    a, b = r["cached"], r["reference"]
    close = r["acc_diff"] <= 0.1
    steps_ok = max(r["step_ratio_one"], r["step_ratio_many"]) <= 1.5
    return Summary(f"{r['steps']} steps: one trainer {x(r['ratio_wall'])} faster than re-encoding; val acc. "
                   f"{a['val_acc'][0]:.2f} / {b['val_acc']:.2f} (|diff| {r['acc_diff']:.2f}); step time / a plain loop "
                   f"{r['step_ratio_one']:.2f}x (C=1), {r['step_ratio_many']:.2f}x (all of a k)",
                   (("one trainer", f"{a['wall_s']:.2f} s"), ("reference loop", f"{b['wall_s']:.2f} s"),
                    ("plain loop, same features", f"step ratio {r['step_ratio_one']:.2f}x")),
                   r["ratio_wall"], "reference / one trainer (wall)",
                   ">= 100x with |acc diff| <= 0.1; step <= 1.5x a plain loop", r["ratio_wall"] >= 100 and close and steps_ok)


PORTLAND = Bench("portland_training", "portland_training",
                 "Portland on cached features vs the reference loop (same epochs, equal accuracy)",
                 portland_plans,
                 lambda c: Plan(("--epochs", "1", "--root", str(c.root / "embedded"), "--threads", "1",
                                 *overrides(*TINY_RUN[:-1])), 20),
                 portland_summary)


# ---- Portland's offset statistics for seven ViT-L/14-sized experts (memory) ------------------------


def setup_summary(r: dict, c: Context) -> Summary:
    streamed = r["results"][0]
    gb = 1 << 30
    return Summary(f"{streamed['experts']} experts of {streamed['params']:,} parameters: peak RSS "
                   f"{x(r['ratio'])} the experts' bytes", (("experts", f"{streamed['expert_bytes'] / gb:.2f} GB"),
                                                          ("peak RSS", f"{streamed['peak_bytes'] / gb:.2f} GB")),
                   r["ratio"], "(peak - start) / experts", "<= 1.1x", r["ratio"] <= 1.1)


SETUP = Bench("portland_setup", "portland_setup",
              "Portland's offset statistics streamed over seven ViT-L/14-sized experts, peak RSS vs the experts",
              lambda c: [Plan((), 60), Plan(("--scale", "0.25"), 20, "a quarter of ViT-L/14's parameters")],
              lambda c: Plan(("--scale", "0.001"), 3),
              setup_summary)


# ---- the whole Portland stage of a paper5-shaped run ---------------------------------------------


def stage_plans(c: Context) -> list[Plan]:
    device = ("--device", "cuda") if c.device == "cuda" else ()
    base = (*device, *c.thread_args())
    if c.device == "cuda":
        return [Plan(base, 150), Plan((*base, "--measure", "1", "20"), 60), Plan((*base, "--measure", "1", "5"), 35)]
    # float16 features on cpu: the float32 store of paper7's features (11.6 GB) does not fit a small machine
    base = (*base, "--store-dtype", "float16", "--measure", "1", "10")  # 10: an epoch well above the timing noise
    return [Plan(base, 300, "float16 features"), Plan((*base, "--scale", "0.1"), 40, "float16, a tenth of the split sizes")]


def stage_summary(r: dict, c: Context) -> Summary:
    if r["measured"]:
        parts = ((f"{r['epochs']} epochs run", f"{r['seconds']:.1f} s"),)
    else:
        parts = (*((f"{e} epochs run", f"{w:.1f} s") for e, w in zip(r["measure"], r["walls"])),
                 ("fixed (features made, set-up)", f"{r['fixed_s']:.1f} s"), ("per epoch", f"{r['epoch_s']:.2f} s"))
    goal = "<= 60 s on one H100" if c.device == "cuda" else "-"
    return Summary(f"paper5 ({r['rows']:,} train rows, d={r['dim']}, {r['views']} views), {r['epochs']} epochs: "
                   f"{r['seconds']:.1f} s", parts, None, "", goal,
                   r["seconds"] <= 60 if c.device == "cuda" else None,
                   "" if r["measured"] else f"to {r['epochs']} epochs from runs of {r['measure'][0]} and {r['measure'][1]}")


STAGE = Bench("portland_stage", "portland_stage",
              "the whole Portland stage of one paper5-shaped run (real split sizes, d = 512, 2 views, default epochs)",
              stage_plans,
              lambda c: Plan(("--scale", "0.002", "--dim", "16", "--epochs", "2", "--threads", "1"), 5),
              stage_summary)


# ---- the paper's 120-combination study ------------------------------------------------------------


def study_plans(c: Context) -> list[Plan]:
    if c.device == "cuda":
        base = ("--device", "cuda", "--epochs", "2", *c.thread_args())
        return [Plan((*base, "--limit", "2"), 200), Plan((*base, "--limit", "1"), 120, "1 combination per k")]
    base = ("--epochs", "1", *c.thread_args())
    return [Plan((*base, "--scale", "0.1", "--limit", "2"), 100, "a tenth of the split sizes"),
            Plan((*base, "--scale", "0.05", "--limit", "1"), 50, "a twentieth of the split sizes")]


def study_summary(r: dict, c: Context) -> Summary:
    seq_h, bat_h = r["estimated_h"]
    peak = r["batched"]["peak_ratio"]
    cuda = c.device == "cuda"
    met = peak <= 1.3 and (bat_h * 60 <= 10 if cuda else True)
    return Summary(f"120 combinations x 200 epochs: batched {bat_h * 60:.1f} min, peak RSS {peak:.2f}x the features",
                   (("one at a time", f"{seq_h * 60:.1f} min (peak {r['sequential']['peak_ratio']:.2f}x)"),
                    ("batched", f"{bat_h * 60:.1f} min (peak {peak:.2f}x)")),
                   r["speed_estimated"], "one at a time / batched",
                   "<= 10 min on one H100; peak RSS <= 1.3x features" if cuda else "peak RSS <= 1.3x features",
                   met, f"to 120 combinations x 200 epochs; measured {x(r['speed_measured'])} on the runs made")


STUDY = Bench("study_scale", "study_scale",
              "the 120-combination study, batched vs one at a time, peak RSS vs the features' bytes",
              study_plans,
              lambda c: Plan(("--scale", "0.002", "--dim", "16", "--epochs", "2", "--eval-every", "1", "--limit", "1",
                              "--threads", "1", "--store-dtype", "float32", "--in-process"), 8),
              study_summary)


# ---- fine-tune throughput -------------------------------------------------------------------------


def finetune_summary(r: dict, c: Context) -> Summary:
    ips = r["images_per_s"]
    best = "plain_bf16_compile" if "plain_bf16_compile" in ips else "plain_fp32"
    ratio = ips["neulig"] / ips[best]
    fp32 = r["ratios"].get("neulig") if "plain_fp32" in ips else None
    target = r.get("target")
    cuda = r["device"].startswith("cuda")  # the goals are a GPU's: on cpu Lightning's per-step overhead shows
    goal = (f">= 1.00x {best}" + (f"; >= {target:g}x plain_fp32" if target else "")) if cuda else "-"
    met = (ratio >= 1.0 and (fp32 >= target if target and fp32 else True)) if cuda else None
    tf32 = ", ".join(f"{k}={v}" for k, v in r.get("tf32", {}).items())
    return Summary(f"{r['model']} batch {r['batch']}: neulig {ips['neulig']:.0f} img/s"
                   + (f" ({x(fp32)} plain_fp32)" if fp32 else "") + (f"; TF32: {tf32}" if tf32 else ""),
                   tuple((n, f"{v:.0f} img/s") for n, v in ips.items()), ratio, f"neulig / {best}", goal, met)


def finetune(model: str, steps_cuda: int, seconds_cuda: float) -> Bench:
    variants = ("plain_fp32", "plain_bf16_compile", "neulig") if model != "vit_l14" else ("plain_bf16_compile", "neulig")

    def plans(c: Context) -> list[Plan]:
        base = ("--model", model, "--device", "cuda", "--variants", *variants)
        return [Plan((*base, "--steps", str(steps_cuda)), seconds_cuda),
                Plan((*base, "--steps", "5", "--warmup", "2"), seconds_cuda * 0.6, "5 timed steps")]

    return Bench(f"finetune_{model}", "finetune_throughput",
                 f"fine-tune throughput, {model}: neulig vs the best plain loop (bf16 + compile), TF32 printed",
                 plans, lambda c: Plan(("--model", model, "--device", "cuda", "--steps", "1", "--warmup", "1"), 30),
                 finetune_summary, devices=("cuda",))


def finetune_tiny_plans(c: Context) -> list[Plan]:
    return [Plan(("--model", "tiny", "--steps", "10", *c.thread_args()), 30),
            Plan(("--model", "tiny", "--steps", "3", *c.thread_args()), 15, "3 timed steps")]


FINETUNE = [
    finetune("vit_b32", 20, 70), finetune("rn50", 20, 80), finetune("vit_l14", 10, 120),
    Bench("finetune_tiny", "finetune_throughput",
          "fine-tune throughput, tiny on cpu: neulig vs the plain fp32 loop (bf16 + compile is a cuda contender)",
          finetune_tiny_plans,
          lambda c: Plan(("--model", "tiny", "--steps", "1", "--warmup", "1", "--batch-size", "4", "--threads", "1"), 3),
          finetune_summary, devices=("cpu",)),
]


# ---- feature extraction (benchmarks/feature_extraction.py, when present) --------------------------


def extraction_summary(r: dict, c: Context) -> Summary:
    ips = r["images_per_s"]  # open_clip_plain, and neulig over files and over parquet
    plain = ips["open_clip_plain"]
    worst = min((n for n in ips if n != "open_clip_plain"), key=lambda n: ips[n])
    ratio = ips[worst] / plain
    return Summary(f"slowest neulig path ({worst}) at {x(ratio)} the plain loop",
                   tuple((n, f"{v:.0f} img/s") for n, v in ips.items()), ratio, f"{worst} / open_clip_plain",
                   ">= 0.95x", ratio >= 0.95)


def extraction_plans(c: Context) -> list[Plan]:
    if c.device == "cuda":
        base = ("--device", "cuda", "--workers", "8", "--batch", "256")
        return [Plan((*base, "--images", "2048"), 60), Plan((*base, "--images", "512", "--repeats", "1"), 25,
                                                            "512 images, 1 repeat")]
    base = ("--device", "cpu", *c.thread_args())
    return [Plan(base, 90), Plan((*base, "--images", "64", "--repeats", "1"), 30, "64 images, 1 repeat")]


EXTRACTION = Bench("feature_extraction", "feature_extraction",
                   "feature extraction images/s (ViT-B/32, JPEGs at real sizes) vs a plain DataLoader loop",
                   extraction_plans,
                   lambda c: Plan(("--model", "tiny", "--images", "8", "--batch", "4", "--repeats", "1",
                                   "--device", "cpu"), 10),
                   extraction_summary, optional=True)


# ---- alignment of two ViT-B/32 experts -----------------------------------------------------------


def alignment_plans(c: Context) -> list[Plan]:
    base = ("--arch", "vit_b32", *c.thread_args())
    return [Plan(base, 60 if c.device == "cuda" else 110),
            Plan((*base, "--images", "16", "--max-sweeps", "3"), 40, "16 images, 3 sweeps"),
            Plan((*base, "--images", "8", "--max-sweeps", "2"), 20, "8 images, 2 sweeps")]


def alignment_summary(r: dict, c: Context) -> Summary:
    phases = tuple((k, f"{v:.1f} s") for k, v in r["phases"].items())
    return Summary(f"{r['arch']} {r['method']}: {r['seconds']:.1f} s, {r['sweeps']} sweeps (on the CPU)", phases, None, "",
                   "no target yet", None)


ALIGNMENT = Bench("alignment", "alignment", "the permutation alignment of two ViT-B/32 experts (runs on the CPU)",
                  alignment_plans,
                  lambda c: Plan(("--arch", "tiny", "--images", "4", "--batch-size", "4", "--max-sweeps", "2",
                                  "--threads", "1"), 3),
                  alignment_summary)


# ---- make run, cold and warm ---------------------------------------------------------------------


def make_run_summary(r: dict, c: Context) -> Summary:
    return Summary(f"make run: cold {r['cold_s']:.1f} s, warm {r['warm_s']:.1f} s",
                   (("cold (empty root)", f"{r['cold_s']:.1f} s"), ("warm (cached stages)", f"{r['warm_s']:.1f} s")),
                   r["cold_s"] / r["warm_s"], "cold / warm", "-", None)


MAKE_RUN = Bench("make_run", "make_run", "`make run` cold (empty paths.root_dir) and warm, as subprocesses",
                 lambda c: [Plan(("--root", rel(c.root / "embedded")), 400),
                            Plan(("--root", rel(c.root / "embedded"), "-o", "merge.global_epochs=20"), 150,
                                 "merge.global_epochs=20, not 200")],
                 lambda c: Plan(("--root", str(c.root / "embedded"), "--via", "python",
                                 *overrides(*TINY_RUN, "logger=none")), 25),
                 make_run_summary, devices=("cpu",))


# make_run first: its warm root holds the stages portland_training reads
ROWS: list[Bench] = [MERGE, MAKE_RUN, PORTLAND, SETUP, STAGE, STUDY, *FINETUNE, EXTRACTION, ALIGNMENT]
BY_NAME = {b.name: b for b in ROWS}
assert len(BY_NAME) == len(ROWS), "row names are unique"

