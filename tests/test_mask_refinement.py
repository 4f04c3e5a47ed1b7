"""Pixel-adaptive mask refinement: affinities, and label maps snapped to colour edges."""

import pytest
import torch

from vilseg_d2.modeling import local_affinity, refine_masks

from helpers import square_on_texture


def iou(a, b):
    return ((a & b).sum() / (a | b).sum()).item()


def test_affinity_weights_sum_to_one_and_stop_at_edges():
    image, _ = square_on_texture()
    aff = local_affinity(image, dilations=(1, 2, 4))
    assert aff.shape == (24, 64, 64)
    assert torch.allclose(aff.sum(0), torch.ones(64, 64), atol=1e-5)
    # pixel (21, 21), inside the square's corner: its neighbours 2 px up or left lie outside
    # (8..15 = dilation 2: (dy, dx) = (-2,-2), (-2,0), (-2,2), (0,-2), (0,2), (2,-2), (2,0), (2,2)).
    inside = aff[[14, 15], 21, 21]  # (2, 0), (2, 2): in the square
    across = aff[[8, 9, 11], 21, 21]  # (-2, -2), (-2, 0), (0, -2): on the background
    assert inside.min() > 10 * across.max()


def test_a_coarse_mask_snaps_to_the_object():
    image, truth = square_on_texture()
    coarse = torch.zeros(64, 64, dtype=torch.bool)
    coarse[16:48, 16:48] = (
        True  # the 16-px token grid's view of the square: 4 px too wide on every side
    )
    masks = torch.stack(
        [(~coarse).float() * 0.6, coarse.float() * 0.7, torch.zeros(64, 64)]
    )  # bg, square, unused
    before = iou(coarse, truth)
    refined = refine_masks(image, masks, iterations=10, dilations=(1, 2, 4, 8))
    after = iou(refined.argmax(0) == 1, truth)
    assert before < 0.6 and after > 0.9, (before, after)
    assert torch.allclose(refined.sum(0), torch.ones(64, 64), atol=1e-5)  # vote shares
    assert (refined[2] == 0).all()  # a class absent from the label map stays absent


def test_zero_iterations_give_the_one_hot_label_map_and_bad_input_raises():
    image, truth = square_on_texture(size=32, lo=8, hi=20)
    masks = torch.stack([(~truth).float(), truth.float() * 0.9, truth.float() * 0.5])
    out = refine_masks(image, masks, iterations=0)
    assert torch.equal(out, torch.stack([(~truth).float(), truth.float(), torch.zeros(32, 32)]))
    with pytest.raises(ValueError, match="K x H x W masks"):
        refine_masks(image, masks[:, :16])
    with pytest.raises(ValueError, match="dilations"):
        refine_masks(image, masks, iterations=1, dilations=(0, 2))
    with pytest.raises(ValueError, match="iterations"):
        refine_masks(image, masks, iterations=-1)


def test_a_precomputed_affinity_gives_the_same_refinement():
    image, truth = square_on_texture()
    masks = torch.stack([(~truth).float(), truth.float()]).roll(4, dims=2)  # the square 4 px off
    affinity = local_affinity(image, dilations=(1, 2, 4))
    plain = refine_masks(image, masks, iterations=5, dilations=(1, 2, 4))
    assert torch.equal(
        refine_masks(image, masks, iterations=5, dilations=(1, 2, 4), affinity=affinity), plain
    )
    assert not torch.equal(
        refine_masks(image, masks, iterations=5, dilations=(1, 2, 4), affinity=affinity.flip(0)),
        plain,
    )
    with pytest.raises(ValueError, match=r"affinity of shape \(24, 64, 64\).*got \(16, 64, 64\)"):
        refine_masks(image, masks, iterations=5, dilations=(1, 2, 4), affinity=affinity[:16])


@pytest.mark.parametrize("size", [(1, 1), (5, 3), (16, 16)])
def test_images_smaller_than_the_dilations(size):
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, *size, generator=g)
    masks = torch.rand(4, *size, generator=g)
    out = refine_masks(image, masks, iterations=3, dilations=(1, 24))
    assert out.shape == (4, *size) and torch.allclose(out.sum(0), torch.ones(size), atol=1e-5)
