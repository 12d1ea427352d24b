"""psfh.training.batch_augment: the paper recipe's augmentations on a batch, in torch (no MONAI)."""

from __future__ import annotations

import math

import pytest
import torch

from psfh.training.batch_augment import PAPER_RANGES, AugmentRanges, BatchAugmentation, blur, sampling_matrices, warp

S = 64


def square_batch(count: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels: a PS square (1) and an FH disc (2); the image is the label map times 0.4."""
    labels = torch.zeros(count, S, S, dtype=torch.long)
    labels[:, 20:30, 12:24] = 1
    yy, xx = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    labels[:, ((yy - 40) ** 2 + (xx - 40) ** 2) < 100] = 2
    return (labels * 0.4).float()[:, None], labels


def centroid(mask: torch.Tensor) -> torch.Tensor:
    yy, xx = torch.nonzero(mask, as_tuple=True)
    return torch.stack([xx.float().mean(), yy.float().mean()])


def test_a_known_shift_moves_image_and_label_to_where_expected():
    images, labels = square_batch(1)
    theta = sampling_matrices(torch.zeros(1), torch.ones(1, 2), torch.tensor([[10.0, -6.0]]), S)
    warped, moved = warp(images, labels, theta, padding="zeros")
    for value in (1, 2):
        shift = centroid(moved[0] == value) - centroid(labels[0] == value)
        torch.testing.assert_close(shift, torch.tensor([10.0, -6.0]), atol=0.01, rtol=0)
    # the image moved with the label: whole-pixel shifts are exact
    assert torch.equal((warped[0, 0] / 0.4).round().long(), moved[0])


def test_a_quarter_turn_takes_a_dot_right_of_the_centre_to_below_it():
    images, labels = torch.zeros(1, 1, S, S), torch.zeros(1, S, S, dtype=torch.long)
    labels[0, 31:33, 51:53] = 1  # 20 px right of the centre (31.5, 31.5)
    images[labels[:, None] == 1] = 1.0
    theta = sampling_matrices(torch.tensor([math.pi / 2]), torch.ones(1, 2), torch.zeros(1, 2), S)
    warped, moved = warp(images, labels, theta, padding="zeros")
    torch.testing.assert_close(centroid(moved[0] == 1), torch.tensor([31.5, 51.5]), atol=0.01, rtol=0)
    torch.testing.assert_close(centroid(warped[0, 0] > 0.5), torch.tensor([31.5, 51.5]), atol=0.01, rtol=0)


def test_a_zoom_of_1_25_about_the_centre_scales_the_area_by_its_square():
    _, labels = square_batch(1)
    theta = sampling_matrices(torch.zeros(1), torch.full((1, 2), 1.25), torch.zeros(1, 2), S)
    _, moved = warp(labels[:, None].float(), labels, theta, padding="border")
    assert (moved == 1).sum().item() / (labels == 1).sum().item() == pytest.approx(1.25 ** 2, rel=0.05)


def test_random_batches_keep_labels_integer_classes_aligned_with_the_image():
    images, labels = square_batch(64)
    geometric = BatchAugmentation(AugmentRanges(noise_prob=0.0, smooth_prob=0.0))
    out_images, out_labels = geometric(images, labels, torch.Generator().manual_seed(3))
    assert out_labels.dtype == torch.long and set(out_labels.unique().tolist()) <= {0, 1, 2}
    changed = (out_labels != labels).flatten(1).any(1)
    assert 0.4 < changed.float().mean() < 0.95, "some samples moved, some (no flip, affine or zoom) did not"
    # The image's classes (intensity 0 / 0.4 / 0.8) agree with the moved labels except on a rim of
    # bilinear mixtures along the outlines.
    agree = ((out_images[:, 0] / 0.4).round().long() == out_labels).float().mean()
    assert agree > 0.985, agree


def test_the_same_seed_gives_the_same_batch_and_another_seed_another():
    images, labels = square_batch(8)
    augment = BatchAugmentation()
    first = augment(images, labels, torch.Generator().manual_seed(7))
    again = augment(images, labels, torch.Generator().manual_seed(7))
    other = augment(images, labels, torch.Generator().manual_seed(8))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


def test_the_ranges_are_the_monai_recipes():
    from psfh.training.augment import paper_augmentations

    flip, affine, zoom, noise, smooth = paper_augmentations().transforms
    r = PAPER_RANGES
    assert (flip.prob, flip.flipper.spatial_axis) == (r.flip_prob, 1)  # left-right
    grid = affine.rand_affine.rand_affine_grid
    assert affine.prob == r.affine_prob and grid.rotate_range == (r.rotate_range,)
    assert grid.translate_range == (r.translate_range, r.translate_range)
    assert grid.scale_range == (r.scale_range, r.scale_range) and affine.padding_mode[0] == "zeros"
    assert (zoom.prob, zoom.rand_zoom.min_zoom, zoom.rand_zoom.max_zoom) == (r.zoom_prob, (r.min_zoom,), (r.max_zoom,))
    assert zoom.rand_zoom.keep_size and zoom.padding_mode[0] == "edge"  # grid_sample's "border"
    gauss = noise.rand_gaussian_noise
    assert (noise.prob, gauss.std, gauss.mean, gauss.sample_std) == (r.noise_prob, r.noise_std, 0.0, True)
    assert (smooth.prob, smooth.rand_smooth.sigma_x, smooth.rand_smooth.sigma_y) == (r.smooth_prob, r.sigma_range,
                                                                                     r.sigma_range)


def test_the_drawn_parameters_follow_the_ranges():
    drawn = BatchAugmentation().draw(40_000, torch.Generator().manual_seed(0))
    r = PAPER_RANGES
    for key, prob in (("flip", r.flip_prob), ("affine", r.affine_prob), ("zoom", r.zoom_prob),
                      ("noise", r.noise_prob), ("smooth", r.smooth_prob)):
        assert drawn[key].float().mean().item() == pytest.approx(prob, abs=0.01), key
    for key, low, high in (("angle", -r.rotate_range, r.rotate_range), ("scale", 1 - r.scale_range, 1 + r.scale_range),
                           ("shift", -r.translate_range, r.translate_range), ("zoom_factor", r.min_zoom, r.max_zoom),
                           ("noise_std", 0.0, r.noise_std), ("sigma_x", *r.sigma_range), ("sigma_y", *r.sigma_range)):
        values = drawn[key]
        assert low <= values.min() and values.max() <= high, key
        assert values.min() < low + 0.01 * (high - low) and values.max() > high - 0.01 * (high - low), key


def test_the_blur_is_monais_gaussian_smoothing():
    from monai.transforms import GaussianSmooth

    image = torch.rand(2, 1, 40, 40, generator=torch.Generator().manual_seed(1))
    sigmas = torch.tensor([0.55, 0.95])
    ours = blur(image, sigmas, sigmas)
    for n, sigma in enumerate(sigmas.tolist()):
        theirs = torch.as_tensor(GaussianSmooth(sigma=sigma, approx="erf")(image[n]))
        torch.testing.assert_close(ours[n], theirs, atol=1e-5, rtol=0)


def test_the_image_source_augments_batches_on_its_device():
    from psfh.training.sources import ImageSource

    images, labels = square_batch(6)
    source = ImageSource((images[:, 0] * 255).byte().numpy(), labels.byte(), S, [0.0] * 3, [1.0] * 3,
                         BatchAugmentation(), device="cpu")
    inputs, out_labels = source.batch(torch.arange(6), torch.Generator().manual_seed(0), augment=True)
    assert inputs["pixel_values"].shape == (6, 3, S, S) and out_labels.shape == (6, S, S)
    assert out_labels.dtype == torch.long
    plain, plain_labels = source.batch(torch.arange(6), None, augment=False)
    assert torch.equal(plain_labels, source.labels.long()) and not torch.equal(plain_labels, out_labels)


@pytest.mark.parametrize("class_weights", [None, (0.5, 2.0, 1.0)])
def test_the_torch_dice_ce_is_monais_in_value_and_gradient(class_weights):
    from monai.losses import DiceCELoss

    from psfh.training.loss import segmentation_loss

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 3, 16, 16, generator=generator, requires_grad=True)
    labels = torch.randint(0, 3, (3, 1, 16, 16), generator=generator)
    labels[2] = 0  # an image without PS or FH: MONAI's smoothing decides its Dice
    weight = None if class_weights is None else torch.tensor(class_weights)
    theirs = DiceCELoss(to_onehot_y=True, softmax=True, lambda_ce=0.2, lambda_dice=0.8, weight=weight)(logits, labels)
    (their_grad,) = torch.autograd.grad(theirs, logits)
    ours = segmentation_loss(0.2, 0.8, class_weights)(logits, labels)
    (our_grad,) = torch.autograd.grad(ours, logits)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(our_grad, their_grad, rtol=1e-5, atol=1e-8)
