"""Permutation spec of open_clip's ``ModifiedResNet`` image tower (the CLIP RN50 family).

Groups:
- ``stem.conv1``, ``stem.conv2``, ``stem.conv3``: the output channels of each stem convolution with
  its BatchNorm, and the input channels of whatever reads them (the next stem conv; for conv3 the
  first bottleneck's conv1 and shortcut).
- ``layer{s}.{b}.conv1`` / ``.conv2``: a bottleneck's inner channels (conv out + BN, next conv in).
- ``layer{s}.residual``: one residual stream per stage: the conv3/bn3 outputs of every block of
  the stage, the shortcut (``downsample``) conv/BN output, the input of every later block of the
  stage, and the input of the next stage's first conv1 and shortcut. The last stage's stream also
  holds the feature axis of the attention pool's positional embedding and the input axis of its
  q/k/v projections.
- ``attnpool.qk`` / ``attnpool.v`` (whole heads, head partners): rows of W_q, W_k (+ biases) share a
  permutation; rows of W_v (+ bias) and the columns of c_proj share another; both pair heads alike.
  The rows of c_proj (and its bias) are the embedding and are never permuted.

BatchNorm ``running_mean``/``running_var`` move with their channels but are left out of the weight
similarity; ``num_batches_tracked`` is in no group.
"""
from __future__ import annotations

from neulig.alignment.spec import Group, PermutationSpec, Probe, Slot, module_shapes
from neulig.errors import NeuligError
from neulig.merging.state_dict import BN_COUNT, BN_MEAN, BN_VAR
from neulig.models.openclip import open_clip

ModifiedResNet = open_clip.modified_resnet.ModifiedResNet


def _conv_bn(conv: str, bn: str) -> list[Slot]:
    """A conv's output channels and the BatchNorm that follows it (running statistics move, not compared)."""
    return [Slot(f"{conv}.weight", 0), Slot(f"{bn}.weight", 0), Slot(f"{bn}.bias", 0),
            Slot(f"{bn}.{BN_MEAN}", 0, in_similarity=False), Slot(f"{bn}.{BN_VAR}", 0, in_similarity=False)]


class _Stream:
    """A group under construction (the residual stream grows block by block)."""

    def __init__(self, name: str, slots: list[Slot], probes: list[Probe]):
        self.name, self.slots, self.probes = name, slots, probes

    def group(self, size: int) -> Group:
        return Group(self.name, size, tuple(self.slots), tuple(self.probes))


def _inner_group(name: str, prefix: str, i: int, shapes: dict) -> Group:
    """The output channels of ``<prefix>conv<i>`` (with its BatchNorm), read by ``conv<i + 1>``."""
    return Group(name, shapes[f"{prefix}conv{i}.weight"][0],
                 (*_conv_bn(f"{prefix}conv{i}", f"{prefix}bn{i}"), Slot(f"{prefix}conv{i + 1}.weight", 1)),
                 (Probe(f"{prefix}conv{i + 1}", "input"),))


def resnet_spec(visual: ModifiedResNet) -> PermutationSpec:
    """Build the spec from the module (shapes from its state dict; the meta device is fine)."""
    shapes = module_shapes(visual)
    groups: list[Group] = []
    for i in (1, 2):
        groups.append(_inner_group(f"stem.conv{i}", "", i, shapes))
    stream = _Stream("stem.conv3", _conv_bn("conv3", "bn3"), [Probe("layer1.0", "input")])
    size = shapes["conv3.weight"][0]
    for s in (1, 2, 3, 4):
        for b, block in enumerate(getattr(visual, f"layer{s}")):
            p = f"layer{s}.{b}"
            stream.slots.append(Slot(f"{p}.conv1.weight", 1))
            if block.downsample is not None:  # a new stream starts: close the one this block reads
                if b != 0:
                    raise NeuligError(f"cannot align this ModifiedResNet: {p} changes width inside a stage")
                stream.slots.append(Slot(f"{p}.downsample.0.weight", 1))
                groups.append(stream.group(size))
                stream = _Stream(f"layer{s}.residual", _conv_bn(f"{p}.downsample.0", f"{p}.downsample.1"), [])
                size = shapes[f"{p}.downsample.0.weight"][0]
            for c in (1, 2):
                groups.append(_inner_group(f"{p}.conv{c}", f"{p}.", c, shapes))
            stream.slots.extend(_conv_bn(f"{p}.conv3", f"{p}.bn3"))
            stream.probes.append(Probe(p, "output"))
    pool = "attnpool"
    stream.slots.extend([Slot(f"{pool}.positional_embedding", 1), Slot(f"{pool}.q_proj.weight", 1),
                         Slot(f"{pool}.k_proj.weight", 1), Slot(f"{pool}.v_proj.weight", 1)])
    groups.append(stream.group(size))
    embed, heads = shapes[f"{pool}.q_proj.weight"][0], visual.attnpool.num_heads
    groups.append(Group(
        f"{pool}.qk", embed,
        (Slot(f"{pool}.q_proj.weight", 0), Slot(f"{pool}.q_proj.bias", 0),
         Slot(f"{pool}.k_proj.weight", 0), Slot(f"{pool}.k_proj.bias", 0)),
        (Probe(pool, "q"), Probe(pool, "k")), heads=heads, head_partner=f"{pool}.v",
    ))
    groups.append(Group(
        f"{pool}.v", embed,
        (Slot(f"{pool}.v_proj.weight", 0), Slot(f"{pool}.v_proj.bias", 0), Slot(f"{pool}.c_proj.weight", 1)),
        (Probe(pool, "v"),), heads=heads, head_partner=f"{pool}.qk",
    ))
    fixed = tuple(k for k in shapes if k.endswith(BN_COUNT)) + (f"{pool}.c_proj.bias",)
    return PermutationSpec("ModifiedResNet", tuple(groups), shapes, fixed)
