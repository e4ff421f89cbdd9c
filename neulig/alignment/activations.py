"""Activation statistics for activation-space similarity (MuDSC, arXiv 2403.01753; ZipIt!, arXiv 2305.03053).

The reference model and every other model run on the same unlabeled image batches. Forward hooks
read each group's probe sites (see :class:`neulig.alignment.spec.Probe`); a site's activations are
arranged as [units, samples] (channel axis 1 of a feature map, the last axis of token tensors) and
the reference's and the other model's samples are paired one to one. Per (other model, group, site)
a :class:`~neulig.alignment.similarity.CrossMoments` accumulates the batch-size weighted moments
that S_act needs.

Attention Q/K/V: ``nn.MultiheadAttention`` and the ResNet attention pool compute the projections
inside one functional call, so there is no module to hook; the hook on the attention module's input
recomputes q = x W_q^T + b_q (and k, v) with the running model's own weights.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from neulig.alignment.similarity import CrossMoments
from neulig.alignment.spec import PermutationSpec
from neulig.errors import NeuligError
from neulig.merging.state_dict import StateDict

GroupMoments = dict[str, list[CrossMoments]]  # group name -> one CrossMoments per probe site


def units_by_samples(x: Tensor) -> Tensor:
    """[units, samples]: channels are axis 1 of a [B, C, H, W] map and the last axis of anything else."""
    if x.dim() == 4:
        return x.transpose(0, 1).reshape(x.shape[1], -1)
    return x.reshape(-1, x.shape[-1]).T


def _arg(args: tuple, kwargs: dict, index: int, name: str) -> Tensor:
    return args[index] if len(args) > index else kwargs[name]


def attention_projections(module: nn.Module, path: str, state: StateDict, args: tuple, kwargs: dict,
                          kinds: Sequence[str]) -> dict[str, Tensor]:
    """q, k and/or v that the attention module ``path`` computes from its inputs, with ``state``'s weights."""
    out = {}
    if isinstance(module, nn.MultiheadAttention):  # open_clip ViT blocks: one packed in_proj
        e = module.embed_dim
        weight, bias = state[f"{path}.in_proj_weight"], state.get(f"{path}.in_proj_bias")
        for i, (kind, name) in enumerate((("q", "query"), ("k", "key"), ("v", "value"))):
            if kind in kinds:
                b = None if bias is None else bias[i * e:(i + 1) * e]
                out[kind] = F.linear(_arg(args, kwargs, i, name), weight[i * e:(i + 1) * e], b)
    elif hasattr(module, "q_proj") and hasattr(module, "positional_embedding"):  # ModifiedResNet AttentionPool2d
        x = _arg(args, kwargs, 0, "x")
        x = x.flatten(2).permute(2, 0, 1)  # NCHW -> (HW)NC, as AttentionPool2d.forward
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
        x = x + state[f"{path}.positional_embedding"][:, None, :].to(x.dtype)
        for kind in kinds:
            out[kind] = F.linear(x, state[f"{path}.{kind}_proj.weight"], state[f"{path}.{kind}_proj.bias"])
    else:
        raise NeuligError(f"module {path!r} ({type(module).__name__}) is not an attention module the probes know")
    return out


class _Recorder:
    """Routes hooked activations: the reference's are kept for the batch, the others' are paired with them."""

    def __init__(self, spec: PermutationSpec, num_others: int):
        self.routes: dict[tuple[str, str], list[tuple[str, int]]] = {}
        for group in spec.groups:
            for site, probe in enumerate(group.probes):
                self.routes.setdefault((probe.module, probe.kind), []).append((group.name, site))
        self.moments: list[GroupMoments] = [
            {g.name: [CrossMoments() for _ in g.probes] for g in spec.groups if g.probes} for _ in range(num_others)
        ]
        self.side = -1  # -1: the reference is running; i >= 0: other model i
        self.state: StateDict = {}
        self.stash: dict[tuple[str, int], Tensor] = {}

    def record(self, path: str, kind: str, x: Tensor) -> None:
        units = units_by_samples(x.detach().float())
        for name, site in self.routes[(path, kind)]:
            if self.side < 0:  # token tensors give a view: keep a copy, later layers may reuse the storage
                self.stash[(name, site)] = units.contiguous()
            else:
                self.moments[self.side][name][site].update(self.stash[(name, site)], units)

    def hooks(self, visual: nn.Module) -> list[Any]:
        kinds_by_module: dict[str, set[str]] = {}
        for path, kind in self.routes:
            kinds_by_module.setdefault(path, set()).add(kind)
        handles = []
        for path, kinds in kinds_by_module.items():
            try:
                module = visual.get_submodule(path)
            except AttributeError:
                raise NeuligError(f"probe module {path!r} is not in the {type(visual).__name__} tower") from None
            pre = tuple(sorted(kinds - {"output"}))
            if pre:
                def pre_hook(mod, args, kwargs, path=path, pre=pre):
                    if "input" in pre:
                        self.record(path, "input", _arg(args, kwargs, 0, "input"))
                    attn = [k for k in pre if k != "input"]
                    if attn:
                        for kind, x in attention_projections(mod, path, self.state, args, kwargs, attn).items():
                            self.record(path, kind, x)
                handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
            if "output" in kinds:
                handles.append(module.register_forward_hook(
                    lambda mod, args, output, path=path: self.record(path, "output", output)))
        return handles


def collect_moments(visual: nn.Module, spec: PermutationSpec, reference: StateDict, others: Sequence[StateDict],
                    images: Iterable[Tensor | Sequence[Tensor]]) -> list[GroupMoments]:
    """Per other model: group name -> the CrossMoments of each probe site against the reference.

    ``visual`` gives the architecture (its own weights are not used; it runs each state dict through
    ``torch.func.functional_call``, in eval mode, under ``no_grad``; its hooks and train/eval flags
    are restored afterwards). ``images`` yields normalised [B, 3, H, W] batches (or tuples whose first
    item is one); it is iterated once.
    """
    device = next(visual.parameters()).device
    states = [{k: v.to(device) for k, v in s.items()} for s in (reference, *others)]
    recorder = _Recorder(spec, len(others))
    modes = {m: m.training for m in visual.modules()}
    handles = recorder.hooks(visual)
    try:
        visual.eval()
        with torch.no_grad():
            for batch in images:
                x = (batch[0] if isinstance(batch, (tuple, list)) else batch).to(device)
                for side, state in enumerate(states, start=-1):
                    recorder.side, recorder.state = side, state
                    functional_call(visual, state, (x,))
                recorder.stash.clear()
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    for name, sites in (recorder.moments[0] if recorder.moments else {}).items():
        if any(m.count == 0 for m in sites):
            raise NeuligError(f"no activations reached group {name!r}; pass at least one non-empty image batch")
    return recorder.moments
