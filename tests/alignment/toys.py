"""Hand-sized toys for the alignment tests (imported by the test files).

The tiny MLP of the MuDSC weight-feature oracle: x (2) -> W1 (hidden 2) -> W2 (1 output).
"""
from __future__ import annotations

import torch

from neulig.alignment import Group, PermutationSpec, Slot

MLP_SPEC = PermutationSpec("mlp", (Group("hidden", 2, (Slot("W1", 0), Slot("W2", 1))),), {"W1": (2, 2), "W2": (1, 2)})
MLP_A = {"W1": torch.tensor([[1.0, 0.0], [0.0, 1.0]]), "W2": torch.tensor([[1.0, 2.0]])}
MLP_B = {"W1": torch.tensor([[0.0, 1.2], [0.8, 0.0]]), "W2": torch.tensor([[2.2, 0.8]])}
