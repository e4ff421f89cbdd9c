"""The experts' uniform ensemble at the run's ``ensemble.level`` (the level every method's Ens. column
uses); its merged counterpart is their uniform average."""
from __future__ import annotations

import torch

from neulig.config.merge import EnsembleMerge
from neulig.merging.average import merge as average
from neulig.methods.combination import Combination, Context
from neulig.results import ComboResult


def run(combination: Combination, method: EnsembleMerge, context: Context) -> ComboResult:
    count = len(combination.experts)
    accuracy = {"ensembled": combination.ensemble_accuracy(torch.full((count,), 1.0 / count), context.level),
                "merged": combination.merged_accuracy(average(combination.base, combination.experts), "test")}
    return ComboResult(tuple(combination.names), accuracy, granularity="the uniform average of the experts")
