"""The tiny backbone's CLIP-like optimisation: weight-decay groups, the symmetric multi-positive loss,
the clamped learned temperature."""
from __future__ import annotations

import math

import pytest
import torch


def test_no_weight_decay_on_logit_scale_biases_norms_and_embeddings(clip_and_tokenizer):
    from neulig.models.pretrain import param_groups

    clip, _ = clip_and_tokenizer
    decay, no_decay = param_groups(clip, 0.1)
    names = {id(p): n for n, p in clip.named_parameters()}
    free = {names[id(p)] for p in no_decay["params"]}
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1
    assert {"logit_scale", "token_embedding.weight", "positional_embedding", "visual.class_embedding",
            "visual.positional_embedding", "visual.ln_pre.weight", "visual.ln_pre.bias"} <= free
    assert {names[id(p)] for p in decay["params"]} >= {"visual.conv1.weight", "visual.proj", "text_projection"}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(clip.parameters()))


def test_multi_positive_loss_never_treats_duplicate_captions_as_negatives():
    from neulig.models.pretrain import multi_positive_loss

    labels = torch.tensor([0, 0, 1])
    perfect = torch.tensor([[20.0, -20.0, -20.0], [20.0, -20.0, -20.0], [-20.0, 20.0, -20.0]])
    # two images of concept 0 share its caption: the caption -> image term is uniform over both (log 2)
    assert multi_positive_loss(perfect, labels).item() == pytest.approx(0.5 * 0.5 * math.log(2), abs=1e-4)


@pytest.mark.parametrize(("start", "bound"), [(5.0, "upper"), (-5.0, "lower")])
def test_pretraining_clamps_the_learned_temperature(clip_and_tokenizer, start, bound):
    """Started 5 beyond a bound with a learning rate too small to come back by itself (Adam moves it
    about lr x scale_lr = 1e-4 a step), the learned log-temperature ends on the bound: CLIP's clamp to
    [0, log 100] after every step. Without the clamp it would end about 5 away."""
    import copy

    from neulig.models.pretrain import MAX_LOGIT_SCALE, pretrain_tiny

    clip, tokenizer = clip_and_tokenizer
    clip = copy.deepcopy(clip)
    edge = MAX_LOGIT_SCALE if bound == "upper" else 0.0
    with torch.no_grad():
        clip.logit_scale.fill_(edge + start)
    summary = pretrain_tiny(clip, tokenizer, steps=3, batch_size=16, lr=1e-5, n_per_family=20, seed=0, image_size=32)
    assert 0.0 <= clip.logit_scale.item() <= MAX_LOGIT_SCALE
    assert clip.logit_scale.item() == pytest.approx(edge, abs=1e-3)
    assert summary["logit_scale"] == pytest.approx(math.exp(edge), rel=1e-3)
