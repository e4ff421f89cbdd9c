"""create_clip: the same model for the same seed, drawn without touching the caller's random stream."""
import torch


def test_create_clip_is_seeded_and_leaves_the_global_rng_alone():
    from neulig.models.backbone import create_clip

    torch.manual_seed(123)
    expected_next = torch.rand(4)  # what the caller's stream yields next, had nothing happened in between
    torch.manual_seed(123)
    first = create_clip("neulig-tiny", seed=7).state_dict()
    assert torch.equal(torch.rand(4), expected_next)
    second = create_clip("neulig-tiny", seed=7).state_dict()
    other = create_clip("neulig-tiny", seed=8).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first if first[k].is_floating_point())
