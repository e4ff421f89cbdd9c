"""WeMoE, weight-ensembling mixture of experts (Tang et al., ICML 2024, arXiv 2402.00433).

Architecture (docs/methods.md §10, reference ``src/module/dict_moe.py``):
 - every parameter starts as Task Arithmetic, theta_0 + init_lambda * sum_t tau_t (init_lambda = 0.3),
   and is frozen;
 - the MLP (c_fc, GELU, c_proj) of every residual block ``transformer.resblocks.<l>.mlp`` is replaced
   by a weight-ensembling MoE whose weights depend on the sample x:
       r(x) = mean over tokens of router(h_token)          (no softmax, no top-k, no normalisation)
       W(x) = W_0 + sum_t r_t(x) tau_t                        (each MLP tensor, weights and biases)
   with W_0 the *pre-trained* MLP (not the TA-merged one) and tau_t that MLP's task vectors;
 - router: Linear(d, d)-ReLU-Linear(d, T) (``router_hidden_layers`` = 2), Linear(d, T) (1), or a
   learned per-layer constant vector (0, i.e. layer-wise AdaMerging of the MLPs only). Init as
   DictMoEGate: hidden weight ~ N(0, 0.01^2), bias 0; output weight ~ N(0, 0.01^2), bias init_lambda;
   so r(x) is about 0.3 for every task and the model starts as TA(0.3).

The router sees the tokens entering the MLP (after ln_2). The per-sample MLP is computed batched:
W(x) for the whole batch is one [B, T] x [T, out*in] GEMM and the linear layer one ``baddbmm``,
instead of the reference's Python loop over samples (identical numbers up to float summation order).
open_clip 3.x runs its transformers batch-first ([B, L, D]); a ``Transformer`` with
``batch_first=False`` ([L, B, D]) is handled by transposing around the MoE.

Backbones without such MLP blocks (open_clip's ModifiedResNet, e.g. RN50) raise a NeuligError:
WeMoE is defined only for transformer MLPs (arXiv 2503.01268 Table 2a: "not applicable to ResNet-based
models"). Training (test-time entropy minimisation) lives in ``neulig.lit.wemoe``.
"""
from __future__ import annotations

import copy
import re
from typing import Sequence

import torch
from torch import Tensor, nn

from neulig.errors import NeuligError
from neulig.merging import task_arithmetic
from neulig.merging.state_dict import StateDict

MLP_KEYS = ("c_fc.weight", "c_fc.bias", "c_proj.weight", "c_proj.bias")
MLP_PATTERN = re.compile(r"^transformer\.resblocks\.\d+\.mlp$")


class Router(nn.Module):
    """DictMoEGate: per-token gates [B, L, T] from the tokens entering the MLP [B, L, D]."""

    def __init__(self, dim: int, num_experts: int, init_lambda: float = 0.3, hidden_layers: int = 2):
        super().__init__()
        if hidden_layers not in (0, 1, 2):
            raise NeuligError(f"merge.router_hidden_layers must be 0, 1 or 2, got {hidden_layers!r}")
        self.hidden_layers, self.num_experts = hidden_layers, num_experts
        if hidden_layers == 2:
            self.fc1 = nn.Linear(dim, dim)
            nn.init.normal_(self.fc1.weight, std=0.01)
            nn.init.zeros_(self.fc1.bias)
        if hidden_layers >= 1:
            self.fc2 = nn.Linear(dim, num_experts)
            nn.init.normal_(self.fc2.weight, std=0.01)
            nn.init.constant_(self.fc2.bias, init_lambda)
        else:
            self.weight = nn.Parameter(torch.full((num_experts,), float(init_lambda)))

    def forward(self, tokens: Tensor) -> Tensor:
        if self.hidden_layers == 0:
            return self.weight.expand(*tokens.shape[:-1], -1)
        if self.hidden_layers == 2:
            tokens = torch.relu(self.fc1(tokens))
        return self.fc2(tokens)

    def routing_weights(self, tokens: Tensor) -> Tensor:
        """r(x) = mean over tokens of the per-token gates: [B, L, D] -> [B, T]."""
        if self.hidden_layers == 0:
            return self.weight.expand(tokens.shape[0], -1)
        return self(tokens).mean(1)


def per_sample_weight(weight: Tensor, tau: Tensor, r: Tensor) -> Tensor:
    """W(x) = W_0 + sum_t r_t(x) tau_t for a batch: W_0 [*S], tau [T, *S], r [B, T] -> [B, *S]."""
    flat = torch.addmm(weight.reshape(1, -1).to(tau.dtype), r.to(tau.dtype), tau.flatten(1))  # one fused pass
    return flat.view(r.shape[0], *weight.shape)


class PerSampleLinear(torch.autograd.Function):
    """y_b = x_b W(x_b)^T + b(x_b) with W(x) = W_0 + sum_t r_t tau_t, differentiable in x and r only.

    Autograd through the plain expression would keep every sample's weight W(x) [B, out, in] alive
    until the backward pass (for ViT-B/32, 8 tasks and 128 images about 1.2 GB per MLP matrix, 29 GB
    in all). This Function saves only x and r and rebuilds W(x) in the backward pass, which costs one
    [B, T] x [T, out*in] GEMM (T / L of the layer's own cost). W_0 and tau are frozen (no gradient).
    """

    @staticmethod
    def forward(ctx, x: Tensor, r: Tensor, weight: Tensor, bias: Tensor, tau_weight: Tensor, tau_bias: Tensor) -> Tensor:
        w = per_sample_weight(weight, tau_weight, r)  # [B, out, in]
        b = per_sample_weight(bias, tau_bias, r)  # [B, out]
        ctx.save_for_backward(x, r, weight, tau_weight, tau_bias)
        return torch.baddbmm(b.unsqueeze(1).to(x.dtype), x, w.transpose(1, 2).to(x.dtype))

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        x, r, weight, tau_weight, tau_bias = ctx.saved_tensors
        grad_x = grad_r = None
        if ctx.needs_input_grad[0]:
            w = per_sample_weight(weight, tau_weight, r.detach())
            grad_x = torch.bmm(grad_y, w.to(grad_y.dtype)).to(x.dtype)
        if ctx.needs_input_grad[1]:
            grad_w = torch.bmm(grad_y.transpose(1, 2), x.to(grad_y.dtype))  # [B, out, in]
            grad_r = (grad_w.flatten(1) @ tau_weight.flatten(1).t().to(grad_w.dtype)
                      + grad_y.sum(1) @ tau_bias.t().to(grad_y.dtype)).to(r.dtype)
        return grad_x, grad_r, None, None, None, None


def per_sample_linear(x: Tensor, weight: Tensor, bias: Tensor, tau_weight: Tensor, tau_bias: Tensor,
                      r: Tensor) -> Tensor:
    """y_b = x_b W(x_b)^T + b(x_b) for every sample b at once: x [B, L, in] -> [B, L, out] (one baddbmm)."""
    return PerSampleLinear.apply(x, r, weight, bias, tau_weight, tau_bias)


def _buffer_name(key: str) -> str:
    return key.replace(".", "_")


class WeightEnsemblingMLP(nn.Module):
    """A residual block's MLP with per-sample weights W(x) = W_0 + sum_t r_t(x) tau_t (frozen W_0, tau).

    ``base`` holds W_0 for :data:`MLP_KEYS`, ``taus`` the stacked task vectors [T, ...]; ``act`` is the
    block's activation (GELU, or QuickGELU for the OpenAI checkpoints). After each forward,
    ``last_weights`` holds the detached routing weights [B, T].
    """

    def __init__(self, act: nn.Module, base: dict[str, Tensor], taus: dict[str, Tensor], router: Router,
                 batch_first: bool = True):
        super().__init__()
        self.act, self.router, self.batch_first = act, router, batch_first
        for key in MLP_KEYS:
            self.register_buffer(_buffer_name(key), base[key].detach().float().clone(), persistent=False)
            self.register_buffer("tau_" + _buffer_name(key), taus[key].detach().float().clone(), persistent=False)
        self.last_weights: Tensor | None = None

    def _linear(self, x: Tensor, name: str, r: Tensor) -> Tensor:
        w, b = _buffer_name(f"{name}.weight"), _buffer_name(f"{name}.bias")
        return per_sample_linear(x, getattr(self, w), getattr(self, b), getattr(self, "tau_" + w),
                                 getattr(self, "tau_" + b), r)

    batch_reduce = False  # one routing vector for the whole batch (its mean), FusionBench's training mode

    def forward(self, x: Tensor) -> Tensor:
        h = x if self.batch_first else x.transpose(0, 1)
        r = self.router.routing_weights(h)
        if self.batch_reduce:
            r = r.mean(0, keepdim=True).expand_as(r)
        self.last_weights = r.detach()
        out = self._linear(self.act(self._linear(h, "c_fc", r)), "c_proj", r)
        return out if self.batch_first else out.transpose(0, 1)


def mlp_prefixes(visual: nn.Module) -> list[str]:
    """Names of the residual-block MLPs ``transformer.resblocks.<l>.mlp`` with c_fc/c_proj; a one-line
    NeuligError when the backbone has none (e.g. open_clip's ModifiedResNet, RN50)."""
    prefixes = [name for name, m in visual.named_modules()
                if MLP_PATTERN.match(name) and isinstance(getattr(m, "c_fc", None), nn.Linear)
                and isinstance(getattr(m, "c_proj", None), nn.Linear) and getattr(m.c_fc, "bias", None) is not None]
    if not prefixes:
        raise NeuligError(f"merge=wemoe needs a vision transformer with MLP blocks (transformer.resblocks.<l>.mlp); "
                          f"this backbone ({type(visual).__name__}) has none, and WeMoE does not apply to it "
                          "(arXiv 2503.01268 Table 2a); use a ViT model")
    return prefixes


class WeMoE(nn.Module):
    """The WeMoE image encoder: TA(init_lambda) everywhere, weight-ensembling MoE MLPs in every block.

    Only the routers are trainable (:meth:`router_parameters`). ``visual`` is deep-copied, never changed.
    """

    def __init__(self, visual: nn.Module, base: StateDict, experts: Sequence[StateDict], init_lambda: float = 0.3,
                 router_hidden_layers: int = 2):
        super().__init__()
        self.layer_names = mlp_prefixes(visual)
        encoder = copy.deepcopy(visual)
        encoder.load_state_dict(task_arithmetic.merge(base, experts, init_lambda))
        encoder.requires_grad_(False)
        batch_first = bool(getattr(getattr(encoder, "transformer", None), "batch_first", True))
        for prefix in self.layer_names:
            mlp = encoder.get_submodule(prefix)
            w0 = {k: base[f"{prefix}.{k}"].float() for k in MLP_KEYS}
            taus = {k: torch.stack([e[f"{prefix}.{k}"].float() - w0[k] for e in experts]) for k in MLP_KEYS}
            router = Router(mlp.c_fc.in_features, len(experts), init_lambda, router_hidden_layers)
            parent, _, child = prefix.rpartition(".")
            setattr(encoder.get_submodule(parent), child, WeightEnsemblingMLP(mlp.gelu, w0, taus, router, batch_first))
        self.encoder = encoder
        self.num_experts = len(experts)

    @property
    def layers(self) -> list[WeightEnsemblingMLP]:
        return [self.encoder.get_submodule(p) for p in self.layer_names]

    def set_batch_reduce(self, on: bool) -> None:
        """Route each batch by its mean routing vector (FusionBench trains so: one forward per task's batch)
        or each sample by its own (the original repository, and every evaluation)."""
        for layer in self.layers:
            layer.batch_reduce = on

    def router_parameters(self) -> list[nn.Parameter]:
        return [p for layer in self.layers for p in layer.router.parameters()]

    def forward(self, images: Tensor) -> Tensor:
        return self.encoder(images)

    def routing_weights(self) -> Tensor:
        """The last forward's routing weights of every MoE layer, [num_layers, B, T]."""
        weights = [layer.last_weights for layer in self.layers]
        if any(w is None for w in weights):
            raise RuntimeError("routing_weights() needs a forward pass first")
        return torch.stack(weights)


def ensemble_coefficients(routing: Tensor) -> Tensor:
    """Per-sample expert coefficients of the ensemble counterpart: the routing weights [layers, B, T]
    averaged over layers, clipped at 0 and normalised to sum 1 (uniform where all are <= 0)."""
    c = routing.float().mean(0).clamp_min(0)
    total = c.sum(-1, keepdim=True)
    uniform = torch.full_like(c, 1.0 / c.shape[-1])
    return torch.where(total > 0, c / total.clamp_min(1e-12), uniform)
