"""Accuracy of encoders, merged weights and ensembles; all numbers in percent."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call

from neulig.merging.state_dict import StateDict
from neulig.models.heads import head_logits


def accuracy(logits: Tensor, labels: Tensor) -> float:
    return 100.0 * (logits.argmax(-1).cpu() == labels.cpu()).float().mean().item()


def feature_accuracy(features: Tensor, labels: Tensor, head: Tensor) -> float:
    return accuracy(head_logits(features, head), labels)


def ensemble_logits(stacked: Tensor, head: Tensor, coeffs: Tensor, level: str = "features") -> Tensor:
    """Ensemble of T experts' features [N, T, d] with coefficients [T] or per-sample [N, T].

    ``features``: h(sum_t c_t z_t), the paper's/reference protocol; ``logits``: sum_t c_t h(z_t).
    """
    c = coeffs.to(stacked).expand(stacked.shape[0], -1) if coeffs.dim() == 1 else coeffs.to(stacked)
    if level == "features":
        return head_logits(torch.einsum("nt,ntd->nd", c, stacked), head)
    if level == "logits":
        per_expert = torch.stack([head_logits(stacked[:, t], head) for t in range(stacked.shape[1])], 1)
        return torch.einsum("nt,ntc->nc", c, per_expert)
    raise ValueError(f"ensemble.level must be 'features' or 'logits', got {level!r}")


@torch.no_grad()
def merged_features(visual: nn.Module, state: StateDict, dataset, batch_size: int, device: torch.device,
                    num_workers: int = 0) -> Tensor:
    """Features of the encoder with weights ``state`` (run through functional_call, no module copy), images
    decoded by ``num_workers`` worker processes."""
    from neulig.data.loaders import loader

    visual = visual.to(device).eval()
    state = {k: v.to(device) for k, v in state.items()}
    return torch.cat([functional_call(visual, state, (x.to(device, non_blocking=True),)).float().cpu()
                      for x, _ in loader(dataset, batch_size, num_workers=num_workers, device=device)])
