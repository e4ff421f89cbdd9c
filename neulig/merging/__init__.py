"""Model merging as pure functions over state dicts (no Lightning, no Hydra).

Every static method lives in its own module and exposes
``merge(base: StateDict, experts: list[StateDict], **hparams) -> StateDict``.
The shared buffer policy (docs/methods.md §0 and §3) is applied by :func:`state_dict.finish_merge`.
"""
from neulig.merging.state_dict import StateDict

__all__ = ["StateDict"]
