"""The budgets a checkpoint from elsewhere is read under (docs/security.md, "Limits").

A file's size says little about what unpickling it costs: a 40-byte pickle can ask for a 2 GB
``bytearray``, a deflated archive member can expand 1000:1, 40 modules that each hold the next twice
make 2^40 paths. :class:`Budget` counts, while the file is read, the bytes of tensor data it expands to
(bounded by the size of the architecture it claims to be, :func:`limits_for`), the pickle opcodes run
(every object a pickle makes costs at least one), the tensors in its state dict and the nesting depth
of its modules; any breach is one :class:`NeuligError` line naming the file and the limit, raised
before the memory is asked for.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from math import prod

from neulig.errors import NeuligError

MIB = 1 << 20
MARGIN = 8  # a whole CLIP (RN50's is 2.7 x its image tower), fp64 copies, optimizer states, ... fit
SLACK = 64 * MIB  # classification heads, small models


@dataclass(frozen=True)
class Limits:
    """What one checkpoint may cost to read. ``basis`` says where ``max_bytes`` comes from (in errors)."""

    max_bytes: int = 4 << 30  # storage bytes read; and, apart, the tensors' numel x element size
    basis: str = "the default for a file of no stated architecture"
    max_ratio: float = 20.0  # uncompressed / compressed size of an archive member over 64 KiB
    max_objects: int = 500_000  # pickle opcodes run (each makes at most one object)
    max_depth: int = 64  # nesting of modules and mappings in the state walk
    max_tensors: int = 50_000  # entries of the flat state dict
    max_members: int = 100_000  # records of a zip archive
    max_line: int = 16 * MIB  # one line of a text (protocol 0) pickle opcode


def limits_for(arch: str, *layouts: Mapping) -> Limits:
    """The limits for a checkpoint claiming to be ``arch``: at most :data:`MARGIN` times the bytes of its
    largest ``layouts`` (state dicts; meta tensors will do) counted in float32, plus :data:`SLACK`."""
    numel = max((sum(prod(v.shape) for v in layout.values()) for layout in layouts), default=0)
    return replace(Limits(), max_bytes=MARGIN * 4 * numel + SLACK,
                   basis=f"{MARGIN} x the {arch} weights in float32 + {SLACK // MIB} MiB")


def over_limit(where: str, what: str) -> NeuligError:
    """The one line for a file that breaks a reading limit."""
    return NeuligError(f"checkpoint {where} breaks a reading limit: {what}; refused before reading further: "
                       "save the model's state dict alone (torch.save(model.state_dict(), path) or safetensors)")


class Budget:
    """The running costs of reading one file, checked against its :class:`Limits` as they grow."""

    def __init__(self, limits: Limits, where: str) -> None:
        self.limits, self.where = limits, where
        self.bytes = {"storage": 0, "tensor": 0}
        self.objects = 0

    def spend(self, nbytes: int, what: str, kind: str = "storage") -> None:
        """Count ``nbytes`` of ``kind`` (``"storage"``: bytes read; ``"tensor"``: what the tensors viewing
        them span, numel x element size, as a stride-0 view can span more) before they are allocated or
        used; ``what`` names them in the error."""
        self.bytes[kind] += nbytes
        if self.bytes[kind] > self.limits.max_bytes:
            raise over_limit(self.where, f"{what} takes its {kind} bytes past {self.limits.max_bytes:,} "
                                         f"({self.limits.basis})")

    def count_object(self) -> None:
        self.objects += 1
        if self.objects > self.limits.max_objects:
            raise over_limit(self.where, f"its pickle runs more than {self.limits.max_objects:,} opcodes")
