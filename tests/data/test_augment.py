"""Batched RandomResizedCrop for augmented-view features."""
import pytest
import torch
import torch.nn.functional as F

from neulig.data.augment import crop_boxes, random_resized_crop


def test_full_box_is_the_identity():
    images = torch.randn(4, 3, 16, 16)
    out = random_resized_crop(images, torch.Generator().manual_seed(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    torch.testing.assert_close(out, images, rtol=0, atol=1e-6)


def test_crop_equals_bilinear_resize_of_the_box_inside_the_border():
    images = torch.randn(3, 3, 32, 32)
    boxes = crop_boxes(3, 32, (0.3, 0.6), (3 / 4, 4 / 3), torch.Generator().manual_seed(5)).long()
    out = random_resized_crop(images, torch.Generator().manual_seed(5), scale=(0.3, 0.6))
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        ref = F.interpolate(images[i : i + 1, :, y1:y2, x1:x2], size=(32, 32), mode="bilinear", align_corners=False)
        # the outermost ring reads half a pixel of real context where interpolate repeats the edge
        torch.testing.assert_close(out[i : i + 1, :, 1:-1, 1:-1], ref[..., 1:-1, 1:-1], rtol=0, atol=1e-5)
    assert not torch.allclose(out, images)


def test_boxes_follow_the_requested_scale_and_stay_inside():
    boxes = crop_boxes(2000, 32, (0.9, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(1))
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert boxes.min() >= 0 and boxes[:, 2:].max() <= 32
    area = width * height / 32**2
    assert 0.75 <= area.min() and area.max() <= 1.0 + 2 / 32  # rounding to whole pixels, clamped to the image
    assert area.mean() == pytest.approx(0.92, abs=0.03)


def test_same_generator_seed_same_crops():
    images = torch.randn(2, 3, 16, 16)
    a = random_resized_crop(images, torch.Generator().manual_seed(7), scale=(0.5, 0.9))
    b = random_resized_crop(images, torch.Generator().manual_seed(7), scale=(0.5, 0.9))
    c = random_resized_crop(images, torch.Generator().manual_seed(8), scale=(0.5, 0.9))
    assert torch.equal(a, b) and not torch.equal(a, c)
