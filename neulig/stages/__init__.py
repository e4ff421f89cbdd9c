"""The cached stages of the recipe, in the order it runs them (each a function of its inputs)."""
from neulig.stages.backbone import Backbone, expert_origins, load_backbone, load_backbones
from neulig.stages.datasets import load_datasets
from neulig.stages.experts import Expert, prepare_experts, user_experts
from neulig.stages.features import RunFeatures, SplitFeatures, all_features, reference_accuracies
from neulig.stages.heads import zero_shot_head

__all__ = ["Backbone", "Expert", "RunFeatures", "SplitFeatures", "all_features", "expert_origins", "load_backbone",
           "load_backbones", "load_datasets", "prepare_experts", "reference_accuracies", "user_experts", "zero_shot_head"]
