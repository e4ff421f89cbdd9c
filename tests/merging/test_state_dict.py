"""first_mismatch, the one key check at every boundary: shapes, and for tensors layout, device and dtype."""
from __future__ import annotations

import torch

from neulig.merging.state_dict import first_mismatch

REFERENCE = {"w": torch.empty(2, 3, device="meta"), "n": torch.empty((), dtype=torch.int64, device="meta")}


def _state(**replace) -> dict:
    return {"w": torch.ones(2, 3), "n": torch.tensor(4), **replace}


def test_a_fitting_state_and_a_cast_away_float_width_pass():
    assert first_mismatch(_state(), REFERENCE) is None
    assert first_mismatch(_state(w=torch.ones(2, 3, dtype=torch.float16)), REFERENCE) is None  # cast on load
    assert first_mismatch(_state(w=torch.ones(2, 3, dtype=torch.float16)), REFERENCE, dtypes=True) == \
        "key 'w' is torch.float16, expected torch.float32"


def test_layout_device_and_kind_of_dtype_are_compared():
    sparse = torch.ones(2, 3).to_sparse()
    assert first_mismatch(_state(w=sparse), REFERENCE) == "key 'w' is a torch.sparse_coo tensor, expected torch.strided"
    assert first_mismatch(_state(w=torch.empty(2, 3, device="meta")), {"w": torch.ones(2, 3)}) == \
        "key 'w' is on meta, expected cpu"
    assert first_mismatch(_state(w=torch.ones(2, 3, dtype=torch.int64)), REFERENCE) == \
        "key 'w' is torch.int64, expected torch.float32"
    assert first_mismatch(_state(n=torch.tensor(4.0)), REFERENCE) == "key 'n' is torch.float32, expected torch.int64"
    assert first_mismatch(_state(n=torch.tensor(True)), REFERENCE) == "key 'n' is torch.bool, expected torch.int64"


def test_shape_references_compare_shapes_only():
    assert first_mismatch({"w": torch.ones(2, 3, dtype=torch.int8)}, {"w": (2, 3)}) is None
    assert first_mismatch({"w": torch.ones(3)}, {"w": (2, 3)}) == "key 'w' has shape (3,), expected (2, 3)"
