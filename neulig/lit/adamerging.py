"""AdaMergingModule: learns AdaMerging's lambdas by entropy minimisation on unlabeled test images.

AdaMerging (Yang et al., ICLR 2024, arXiv 2310.02575) is *test-time adaptation*: like the reference
(``src/main_*_adamerging.py``) the objective sees each task's **test** images, never their labels.
Only the lambdas are trainable; theta_0, the task vectors and the heads are frozen.

Schedule (docs/methods.md §9): Adam (lr 1e-3, betas (0.9, 0.999), no weight decay), ``steps`` = 500
optimisation steps. In each step every task k draws a fresh shuffled sample of its test split and
consumes ``batches_per_task`` batches of ``batch_size`` (the reference's loop breaks after its second
batch of 16: ``batches_per_task`` = 2); the loss is
    L = sum_k sum_{batches b of k} mean_{x in b} H(softmax(head_k(f(x; theta(lambda)))))
One Lightning step is one optimisation step; the images of all tasks go through the encoder in one
``functional_call`` on the merged views (the merged weights are shared by all tasks, and the
encoder runs in eval mode, so this equals one forward per task).

The shared test-time machinery (streams, heads, objective, curve) is ``neulig.lit.test_time.TTAModule``.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.data import Dataset

from neulig.config.merge import AdaMergingMerge
from neulig.lit.test_time import TTAModule
from neulig.merging.adamerging import AdaMergingWeights


class AdaMergingModule(TTAModule):
    """Task-wise or layer-wise AdaMerging on the frozen ``visual`` (its weights are never used: every
    forward is ``functional_call(visual, merger.merged_state(), images)``)."""

    def __init__(self, visual: nn.Module, merger: AdaMergingWeights, heads: dict[str, Tensor],
                 test_sets: dict[str, Dataset], method: AdaMergingMerge, seed: int,
                 curve: Callable[[], dict[str, float]] | None = None):
        super().__init__(heads, test_sets, method, seed, "adamerging", method.batches_per_task,
                         fresh_batches=method.stream == "fresh", per_task_forward=False, curve=curve)
        # kept out of the module tree: the backbone is shared and frozen, and functional_call replaces
        # every one of its tensors, so neither the optimiser, DDP nor a device move should see it
        self.__dict__["visual"] = visual
        self.merger = merger

    def frozen_modules(self) -> list[nn.Module]:
        return [self.visual]

    def encode(self, images: Tensor) -> Tensor:
        return functional_call(self.visual, self.merger.merged_state(), (images,))

    @torch.no_grad()
    def extra_metrics(self) -> dict[str, float]:
        coeffs = self.merger.coefficients().mean(0)
        drift = {f"lambda/{k.removeprefix('lambda_')}": v for k, v in self.merger.drift().items()}
        return {**{f"lambda/{name}": float(c) for name, c in zip(self.names, coeffs)}, **drift}

    def configure_optimizers(self):
        return torch.optim.Adam(self.merger.parameters(), lr=self.lr, betas=(0.9, 0.999), weight_decay=0.0)
