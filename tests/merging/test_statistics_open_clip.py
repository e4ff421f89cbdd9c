"""Fisher / RegMean statistics and LiNeS block maps on real open_clip encoders (tiny ViT, tiny ModifiedResNet).

Slow (importing open_clip costs ~10 s): run with ``pytest -m slow tests/merging``.
"""
from __future__ import annotations

import pytest
import torch

from neulig.errors import NeuligError
from neulig.merging import fisher, lines, regmean
from tests.merging.merge_toys import assert_close

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vit():
    from neulig.models.backbone import create_clip

    return create_clip("neulig-tiny").visual.eval()


@pytest.fixture(scope="module")
def resnet():
    from open_clip.modified_resnet import ModifiedResNet

    torch.manual_seed(0)
    return ModifiedResNet(layers=(1, 1, 1, 1), output_dim=16, heads=2, image_size=32, width=8).eval()


def test_vit_grams_cover_the_mlp_linears_only(vit):
    grams = regmean.collect_grams(vit, [torch.randn(2, 3, 32, 32), torch.randn(3, 3, 32, 32)])
    expected = {f"transformer.resblocks.{i}.mlp.{n}.weight" for i in range(4) for n in ("c_fc", "c_proj")}
    assert set(grams) == expected  # attn.out_proj is applied by weight inside F.multi_head_attention_forward
    assert grams["transformer.resblocks.0.mlp.c_fc.weight"].shape == (96, 96)
    base = vit.state_dict()
    experts = [{k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in base.items()} for _ in range(2)]
    out = regmean.merge(base, experts, [grams, grams])
    key = "transformer.resblocks.0.mlp.c_fc.weight"
    assert_close(out[key], (experts[0][key] + experts[1][key]) / 2, atol=1e-4)  # equal Grams: the average


def test_resnet_has_no_regmean_layer(resnet):
    with pytest.raises(NeuligError, match="RegMean does not apply"):
        regmean.collect_grams(resnet, [torch.randn(2, 3, 32, 32)])


def test_lines_block_maps_of_real_encoders(vit, resnet):
    blocks, count = lines.block_map(vit.state_dict())
    assert count == 4 and blocks["transformer.resblocks.3.mlp.c_proj.weight"] == 3 and "ln_post.weight" not in blocks
    blocks, count = lines.block_map(resnet.state_dict())
    assert count == 4 and blocks["layer4.0.conv1.weight"] == 3 and "attnpool.c_proj.weight" not in blocks


def test_fisher_vmap_matches_loop_on_vit(vit):
    head = torch.randn(64, 5)

    def logits_fn(model, images):
        return model(images) @ head

    batch = (torch.randn(2, 3, 32, 32), torch.tensor([1, 4]))
    a = fisher.estimate_fisher(vit, logits_fn, [batch], mode="empirical", vectorize=True)
    b = fisher.estimate_fisher(vit, logits_fn, [batch], mode="empirical", vectorize=False)
    assert set(a) == {n for n, _ in vit.named_parameters()}
    for k in ("conv1.weight", "transformer.resblocks.0.attn.in_proj_weight", "proj"):
        assert_close(a[k], b[k], atol=1e-7, rtol=1e-3, msg=k)
        assert float(a[k].sum()) > 0
