"""Schema of ``conf/merge/``: what every method declares, by kind, and each built-in method's options.

Every method's yaml names the function that runs it on one dataset combination (``runner``, a dotted
path called as ``runner(combination, method, context)``, see :mod:`neulig.methods`). A static method
also names its pure merge ``fn`` (``fn(base, experts, **hparams)``), optionally the per-expert
``statistics`` it needs (Fisher, Gram matrices: a dotted path too) and ``ensemble_weights`` (the
per-expert coefficients of its ensemble counterpart; uniform when absent). No code outside a method's
own files compares method names: what differs between methods is in these fields.

A yaml selects its schema in its defaults list (``/schema/merge/<schema>@_here_``). Built-in methods
have typed hyperparameters below, checked while the config is composed; a new static method may use
the generic ``static`` schema, whose ``hparams`` are checked against ``fn``'s signature instead.
"""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from omegaconf import MISSING

from neulig.config.fields import ConfigError, check_dotted, mapping, non_negative, option, positive

KINDS = ("static", "trained", "ensemble")
MERGE_FNS = ("mean", "sum", "max")  # TIES' disjoint merge
TRIMS = ("exact", "reference")  # TIES' top-k: exactly floor(k P), or the reference's kthvalue count


@dataclass
class MergeConfig:
    """What every method declares."""

    name: str = MISSING  # the yaml's file name: run names, tags and reports use it
    kind: str = option(MISSING, choices=KINDS)  # static / trained / ensemble: what its numbers mean
    runner: str = MISSING  # dotted path: runner(combination, method, context) -> ComboResult
    # dotted path: runner_many(combinations, method, context) -> [ComboResult], all k-combinations at once
    # (data.num_co_models); null: the runner, one combination at a time
    runner_many: Optional[str] = None

    def check(self, prefix: str) -> None:
        check_dotted(f"{prefix}runner", self.runner)
        if self.runner_many is not None:
            check_dotted(f"{prefix}runner_many", self.runner_many)

    def train_views(self) -> Optional[Tuple[int, Tuple[float, float]]]:
        """(views, crop scale range) of augmented train views the method trains on; None: none."""
        return None


# ---- static methods: a pure function of the experts' weights ---------------------------------------

@dataclass
class StatisticsConfig:
    """Per-expert statistics estimated on the expert's own train split, passed to ``fn`` as ``argument``."""

    fn: str = MISSING  # dotted path: fn(encoder, head, batches, *, seed, **options) -> state dict
    argument: str = MISSING  # the keyword of the merge function that receives one statistic per expert
    num_batches: int = positive()
    batch_size: int = positive(32)


FISHER_MODES = ("empirical", "exact", "sampled")  # neulig.merging.fisher.estimate_fisher's


@dataclass
class FisherStatistics(StatisticsConfig):
    mode: str = option(MISSING, choices=FISHER_MODES)


@dataclass
class StaticMerge(MergeConfig):
    """A static merge. ``hparams`` are keyword arguments of ``fn``; ``grid`` picks one of them on the
    validation split ({hparam: [values]}, the test split is never used for selection)."""

    fn: str = MISSING
    hparams: Dict[str, Any] = field(default_factory=dict)
    grid: Any = mapping(list, "{hparam: [values]}")  # e.g. merge.grid={scaling:[0.1,0.3]}; null: no search
    ensemble_weights: Optional[str] = None  # dotted path: ensemble_weights(num_experts, **hparams) -> [T]
    statistics: Optional[StatisticsConfig] = None

    def check(self, prefix: str) -> None:
        super().check(prefix)
        check_dotted(f"{prefix}fn", self.fn)
        if self.ensemble_weights is not None:
            check_dotted(f"{prefix}ensemble_weights", self.ensemble_weights)
        if self.statistics is not None:
            check_dotted(f"{prefix}statistics.fn", self.statistics.fn)
        if self.grid is not None:
            if len(self.grid) != 1:
                raise ConfigError(f"{prefix}grid", self.grid, "one hyperparameter (use hparams_search for more)")
            (name, values), = self.grid.items()
            if not values:
                raise ConfigError(f"{prefix}grid.{name}", values, "a non-empty list of values")
            self.check_grid(prefix, name, values)
        if isinstance(self.hparams, dict):  # the generic schema: checked against fn's signature
            from neulig.config.signature import check_keywords

            check_keywords(f"{prefix}hparams", self.fn, self.hparams, skip=("base", "experts", "masks") + (
                (self.statistics.argument,) if self.statistics else ()))

    def check_grid(self, prefix: str, name: str, values: List[Any]) -> None:
        """Every grid value must be a valid value of the hyperparameter it replaces."""
        import copy
        import dataclasses

        from neulig.config.fields import check_fields

        if isinstance(self.hparams, dict):
            if name not in self.hparams:
                raise ConfigError(f"{prefix}grid", self.grid, f"a key of {prefix}hparams ({', '.join(self.hparams)})")
            return
        names = [f.name for f in dataclasses.fields(self.hparams)]
        if name not in names:
            raise ConfigError(f"{prefix}grid", self.grid, f"a key of {prefix}hparams ({', '.join(names)})")
        for value in values:
            trial = copy.copy(self.hparams)
            setattr(trial, name, value)
            try:
                check_fields(trial, f"{prefix}hparams.")
            except ConfigError as err:
                raise ConfigError(f"{prefix}grid.{name}", values, f"values that are {err.allowed}") from None


@dataclass
class AverageHparams:
    weights: Optional[List[float]] = option(None, low=0)  # one per expert, normalised; null: uniform


@dataclass
class AverageMerge(StaticMerge):
    hparams: AverageHparams = field(default_factory=AverageHparams)


@dataclass
class TaskArithmeticHparams:
    scaling: float = MISSING  # lambda


@dataclass
class TaskArithmeticMerge(StaticMerge):
    hparams: TaskArithmeticHparams = field(default_factory=TaskArithmeticHparams)


@dataclass
class TiesHparams:
    density: float = option(MISSING, low=0, low_open=True, high=1)  # k: the share of |tau| kept per task
    scaling: float = MISSING  # lambda
    merge_fn: str = option(MISSING, choices=MERGE_FNS)
    trim: str = option(MISSING, choices=TRIMS)


@dataclass
class TiesMerge(StaticMerge):
    hparams: TiesHparams = field(default_factory=TiesHparams)


@dataclass
class DareHparams:
    p: float = option(MISSING, low=0, high=1, high_open=True)  # drop rate
    scaling: float = MISSING
    seed: int = MISSING  # of the drop masks


@dataclass
class DareMerge(StaticMerge):
    hparams: DareHparams = field(default_factory=DareHparams)


@dataclass
class DareTiesHparams(TiesHparams):
    p: float = option(MISSING, low=0, high=1, high_open=True)
    seed: int = MISSING


@dataclass
class DareTiesMerge(StaticMerge):
    hparams: DareTiesHparams = field(default_factory=DareTiesHparams)


@dataclass
class ModelStockHparams:
    reduce: str = option(MISSING, choices=("cosine", "angle"))
    ignore: List[str] = field(default_factory=list)  # keys that get the plain average


@dataclass
class ModelStockMerge(StaticMerge):
    hparams: ModelStockHparams = field(default_factory=ModelStockHparams)


@dataclass
class LinesHparams:
    beta: float = MISSING
    alpha: Optional[float] = None  # null: (||sum_t tau_t||_1 / ||tau_MTL||_1) / T
    task_vector: str = option(MISSING, choices=("sum", "ties"))
    density: float = option(MISSING, low=0, low_open=True, high=1)
    merge_fn: str = option(MISSING, choices=MERGE_FNS)
    trim: str = option(MISSING, choices=TRIMS)
    num_blocks: Optional[int] = option(None, low=1)  # null: max block index + 1


@dataclass
class LinesMerge(StaticMerge):
    hparams: LinesHparams = field(default_factory=LinesHparams)


@dataclass
class FisherHparams:
    weights: Optional[List[float]] = option(None, low=0)
    floor: float = positive()
    favor_target: bool = MISSING
    normalize: bool = MISSING


@dataclass
class FisherMerge(StaticMerge):
    hparams: FisherHparams = field(default_factory=FisherHparams)
    statistics: FisherStatistics = MISSING


@dataclass
class RegMeanHparams:
    alpha: float = option(MISSING, low=0, high=1)  # off-diagonal shrink
    ridge: float = non_negative()


@dataclass
class RegMeanMerge(StaticMerge):
    hparams: RegMeanHparams = field(default_factory=RegMeanHparams)
    statistics: StatisticsConfig = MISSING


# ---- the ensemble and the trained combiners ---------------------------------------------------------

LEVELS = ("features", "logits")


@dataclass
class EnsembleMerge(MergeConfig):
    """The experts' uniform ensemble at the run's ``ensemble.level``, as every other method's Ens. column."""

    RENAMED = {"level": "ensemble.level"}  # a dotted name is a key of the whole config


@dataclass
class PortlandFisher:
    """The experts' diagonal Fishers that ``regularizer: fisher_variance`` measures offsets in, each
    estimated on the expert's own train split (read by no other regulariser)."""

    num_batches: int = positive()
    batch_size: int = positive()
    mode: str = option(MISSING, choices=FISHER_MODES)


@dataclass
class PortlandMerge(MergeConfig):
    """Neural Ligand (arXiv 2503.01268): Portland trained on cached expert features."""

    RENAMED = {"alignment": "loss", "eval_batch_size": "merged_batch_size"}  # earlier names: the error names the new key

    loss: str = option(MISSING, choices=("sup", "semi"))  # L_b: cross-entropy, or prediction entropy
    regularizer: str = option(MISSING, choices=("reference", "exact", "variance", "fisher_variance"))  # L_a
    offsets_over: str = option(MISSING, choices=("all", "params"))
    scaling: float = positive()  # L_a weight = 1 / scaling
    lr: float = positive()
    views: int = non_negative()  # augmented crop views per train image (0: clean features only)
    view_scale: List[float] = option(MISSING, low=0, low_open=True, high=1)  # crop area range [lo, hi]
    batch_size: int = positive()
    global_epochs: int = positive()
    eval_every: int = positive()
    merged_batch_size: int = positive()  # test images per merge in acc/merged (one merge per batch): changes results
    batch_weights: str = option(MISSING, choices=("mean", "first"))
    eval_shuffle: bool = MISSING
    fisher: PortlandFisher = field(default_factory=PortlandFisher)

    def train_views(self) -> Optional[Tuple[int, Tuple[float, float]]]:
        return (self.views, (self.view_scale[0], self.view_scale[1])) if self.views else None

    def check(self, prefix: str) -> None:
        super().check(prefix)
        if len(self.view_scale) != 2 or self.view_scale[0] > self.view_scale[1]:
            raise ConfigError(f"{prefix}view_scale", self.view_scale, "[low, high] with 0 < low <= high <= 1")


@dataclass
class AdaMergingMerge(MergeConfig):
    """AdaMerging (arXiv 2310.02575): lambdas learned by entropy minimisation on unlabeled test images."""

    granularity: str = option(MISSING, choices=("task", "layer"))
    init_lambda: float = MISSING
    steps: int = positive()
    lr: float = positive()
    batch_size: int = positive()
    batches_per_task: int = positive()
    clamp: bool = MISSING  # clamp(lambda, 0, 1) in the forward pass
    stream: str = option(MISSING, choices=("fresh", "cycled"))  # test batches: a fresh permutation each step, or cycled
    log_every: int = positive()
    curve_every: int = option(MISSING, low=0)  # merged val/test accuracy every k steps (0: none), the run's curve.png


@dataclass
class WeMoEMerge(MergeConfig):
    """WeMoE (arXiv 2402.00433): routed MLP task vectors, routers trained on unlabeled test images."""

    init_lambda: float = MISSING
    router_hidden_layers: int = option(MISSING, choices=(0, 1, 2))
    steps: int = positive()
    lr: float = positive()
    lr_schedule: str = option(MISSING, choices=("cosine", "constant"))
    batch_reduce: bool = MISSING  # train with one routing vector per task batch (one forward per task)
    batch_size: int = positive()
    log_every: int = positive()
    curve_every: int = option(MISSING, low=0)  # val/test accuracy every k steps (0: none), the run's curve.png


SCHEMAS = {
    "static": StaticMerge, "average": AverageMerge, "task_arithmetic": TaskArithmeticMerge, "ties": TiesMerge,
    "dare": DareMerge, "dare_ties": DareTiesMerge, "model_stock": ModelStockMerge, "lines": LinesMerge,
    "fisher": FisherMerge, "regmean": RegMeanMerge, "ensemble": EnsembleMerge, "portland": PortlandMerge,
    "adamerging": AdaMergingMerge, "wemoe": WeMoEMerge,
}
