"""``python -m neulig.diagnose [overrides]``: is the backbone CLIP-like enough for entropy-driven merging?

AdaMerging (arXiv 2310.02575) and WeMoE (arXiv 2402.00433) minimise the prediction entropy of the
merged model on unlabeled test inputs, which helps only where lower entropy means higher accuracy. On
real CLIP it does; this command measures it on any backbone, with exactly what ``python -m neulig.run``
with the same overrides builds (and caches): backbone, datasets, zero-shot heads, experts. It reports

1. the learned temperature, ``exp(logit_scale)`` (CLIP's ends at its clamp, 100);
2. zero-shot accuracy and mean prediction entropy per task (the average is a run's ``acc/pretrained/avg``);
3. every expert on every task: accuracy and entropy (a wrong expert should be the less confident);
4. a Task Arithmetic sweep theta(l) = theta_0 + l * sum_t tau_t, l = 0, 0.1, ..., 1.0, on the test
   splits: per task the accuracy and the entropy H(softmax(head_t(f(x; theta(l))))) of the frozen
   zero-shot head (its logits carry the logit scale), averaged over the split;
5. Spearman's rank correlation over the 11 points between the mean-over-tasks entropy and the
   mean-over-tasks accuracy (and per task). Entropy is a usable label-free proxy when it is strongly
   negative; the embedded backbone's target is at most -0.8.

    python -m neulig.diagnose                        # the embedded default
    python -m neulig.diagnose seed=1 --json d.json   # every number, also as JSON
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

LAMBDAS = tuple(round(0.1 * i, 1) for i in range(11))


@dataclass(frozen=True)
class Score:
    """Accuracy (%) and mean prediction entropy (nats) of one model on one task's test split."""

    acc: float
    entropy: float


@dataclass(frozen=True)
class SweepPoint:
    """The Task Arithmetic merge at ``scaling`` on every task, and the means over tasks."""

    scaling: float
    tasks: dict[str, Score]

    @property
    def acc(self) -> float:
        return sum(s.acc for s in self.tasks.values()) / len(self.tasks)

    @property
    def entropy(self) -> float:
        return sum(s.entropy for s in self.tasks.values()) / len(self.tasks)


@dataclass(frozen=True)
class Diagnosis:
    """Everything the command reports (see the module docstring)."""

    tasks: list[str]
    logit_scale: float
    zero_shot: dict[str, Score]
    experts: dict[str, dict[str, Score]]  # expert -> task -> score
    sweep: list[SweepPoint]

    @property
    def zero_shot_avg(self) -> float:
        return sum(s.acc for s in self.zero_shot.values()) / len(self.zero_shot)

    def spearman(self, task: str | None = None) -> float:
        """Rank correlation of entropy and accuracy over the sweep: of the sweep's means over tasks (the
        summed entropy that AdaMerging and WeMoE minimise against the average accuracy), or of one task."""
        from scipy.stats import spearmanr

        points = [(p.entropy, p.acc) if task is None else (p.tasks[task].entropy, p.tasks[task].acc)
                  for p in self.sweep]
        entropies, accuracies = zip(*points)
        if len(set(entropies)) < 2 or len(set(accuracies)) < 2:
            return float("nan")  # a constant series has no ranks to correlate
        return float(spearmanr(entropies, accuracies).statistic)

    def to_json(self) -> dict:
        return {**asdict(self), "zero_shot_avg": self.zero_shot_avg,
                "sweep_means": [{"scaling": p.scaling, "acc": p.acc, "entropy": p.entropy} for p in self.sweep],
                "spearman": {"mean": self.spearman(), **{d: self.spearman(d) for d in self.tasks}}}


def score(features, labels, head) -> Score:
    from neulig.merging.adamerging import entropy
    from neulig.models.heads import head_logits

    logits = head_logits(features, head)
    return Score(100.0 * float((logits.argmax(-1) == labels).float().mean()), float(entropy(logits).mean()))


def diagnose(config, lambdas: tuple[float, ...] = LAMBDAS) -> Diagnosis:
    """Build (or read from the cache) the run's stages and measure every number of the report."""
    from neulig.evaluate import merged_features
    from neulig.merging import task_arithmetic
    from neulig.recipe import prepare

    products = prepare(config)
    names, features, heads = products.names, products.features, products.heads
    labels = {d: products.datasets[d].test.labels for d in names}
    zero_shot = {d: score(features.pretrained[d].test, labels[d], heads[d]) for d in names}
    experts = {e: {d: score(features.experts[e][d].test, labels[d], heads[d]) for d in names} for e in names}
    device, sweep = config.trainer.device(), []
    for scaling in lambdas:
        state = task_arithmetic.merge(products.theta_0, [products.experts[d].state for d in names], scaling)
        sweep.append(SweepPoint(scaling, {d: score(merged_features(products.base.visual, state, products.datasets[d].test,
                                                                   config.eval.batch_size, device, config.data.num_workers),
                                                   labels[d], heads[d])
                                          for d in names}))
    return Diagnosis(names, float(products.base.clip.logit_scale.detach().exp()), zero_shot, experts, sweep)


def report(result: Diagnosis) -> str:
    """The diagnosis as Markdown tables (as docs/results.md shows it)."""
    names = result.tasks
    lines = [f"learned logit scale exp(s) = {result.logit_scale:.2f} (CLIP: 100)", "",
             "| zero-shot | " + " | ".join([*names, "avg"]) + " |", "|---" * (len(names) + 2) + "|",
             "| acc % | " + " | ".join(f"{result.zero_shot[d].acc:.2f}" for d in names) + f" | {result.zero_shot_avg:.2f} |",
             "| entropy | " + " | ".join(f"{result.zero_shot[d].entropy:.3f}" for d in names) + " | |", "",
             "| expert \\ task: acc % / entropy | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {e} | " + " | ".join(f"{result.experts[e][d].acc:.2f} / {result.experts[e][d].entropy:.3f}"
                                       for d in names) + " |" for e in names]
    lines += ["", "| Task Arithmetic lambda | " + " | ".join([*names, "mean"]) + " |", "|---" * (len(names) + 2) + "|"]
    lines += [f"| {p.scaling:.1f} | " + " | ".join(f"{p.tasks[d].acc:.2f} / {p.tasks[d].entropy:.3f}" for d in names)
              + f" | {p.acc:.2f} / {p.entropy:.3f} |" for p in result.sweep]
    best = max(result.sweep, key=lambda p: p.acc)
    calmest = min(result.sweep, key=lambda p: p.entropy)
    lines += ["", "Spearman(entropy, accuracy) over the sweep: of the means over tasks "
              f"{result.spearman():+.3f}; per task " + ", ".join(f"{d} {result.spearman(d):+.3f}" for d in names),
              f"best lambda {best.scaling:.1f} ({best.acc:.2f}%), lowest-entropy lambda {calmest.scaling:.1f}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m neulig.diagnose", description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="config overrides, as for python -m neulig.run")
    parser.add_argument("--json", type=Path, help="also write every number to this file")
    args = parser.parse_args(argv)
    from neulig.config import compose, load
    from neulig.config.errors import translate
    from neulig.run import fail

    try:
        config = load(compose(args.overrides))
    except Exception as err:  # noqa: BLE001 - every composition or check error is one line
        fail(str(translate(err, args.overrides)))
    if config.model.origins is not None and len(set(config.model.origins)) > 1:
        fail(f"model.origins={list(config.model.origins)}: the Task Arithmetic sweep needs experts of one origin")
    result = diagnose(config)
    print(report(result))
    if args.json:
        from neulig.utils.cache import atomic_file

        with atomic_file(args.json) as tmp:
            Path(tmp).write_text(json.dumps(result.to_json(), indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
