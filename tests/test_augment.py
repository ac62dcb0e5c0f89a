"""Augmentation: shapes, exact reproducibility under a seed, each transform's effect, identity in eval."""

from __future__ import annotations

import pytest
import torch

from training.data.augment import (
    AugmentConfig,
    Augmenter,
    default_augment,
    gaussian_noise,
    random_affine,
    random_crop,
    random_hflip,
)


def batch(b=6, c=3, h=12, w=10):
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(0))


def test_augmenter_keeps_shape_dtype_and_range():
    x = batch()
    out = Augmenter(AugmentConfig(hflip=True, noise_std=0.05), seed=1).train()(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert not torch.equal(out, x)


def test_same_seed_gives_the_same_augmented_batch_and_another_seed_does_not():
    x, cfg = batch(), AugmentConfig(hflip=True)
    a = Augmenter(cfg, seed=5).train()(x)
    b = Augmenter(cfg, seed=5).train()(x)
    c = Augmenter(cfg, seed=6).train()(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_evaluation_mode_is_the_identity_whatever_the_config():
    x = batch()
    aug = Augmenter(AugmentConfig(hflip=True, noise_std=0.5), seed=0).eval()
    assert aug(x) is x


def test_no_augmentation_config_is_the_identity_in_training_too():
    x = batch()
    assert torch.equal(Augmenter(AugmentConfig.none()).train()(x), x)


def test_hflip_mirrors_some_images_exactly_and_leaves_the_rest():
    x = batch(b=32)
    out = random_hflip(x, torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, x, strict=True)]
    kept = [torch.equal(o, i) for o, i in zip(out, x, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 0 < sum(flipped) < 32


def test_random_crop_shifts_content_by_at_most_the_padding():
    x = torch.zeros(16, 1, 9, 9)
    x[:, :, 4, 4] = 1.0  # one bright pixel in the centre
    out = random_crop(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    pos = [divmod(int(o.flatten().argmax()), 9) for o in out]
    assert all(2 <= r <= 6 and 2 <= c <= 6 for r, c in pos)
    assert len(set(pos)) > 1
    assert out.sum(dim=(1, 2, 3)).eq(1.0).all()  # the pixel never falls off with padding 2


def test_affine_with_no_rotation_and_unit_scale_is_the_identity():
    x = batch()
    out = random_affine(x, 0.0, (1.0, 1.0), torch.Generator().manual_seed(0))
    assert torch.allclose(out, x, atol=1e-5)


def test_affine_rotation_changes_images_but_keeps_their_shape():
    x = batch()
    out = random_affine(x, 30.0, (0.8, 1.2), torch.Generator().manual_seed(0))
    assert out.shape == x.shape and not torch.allclose(out, x, atol=1e-2)


def test_gaussian_noise_has_the_requested_spread():
    x = torch.full((4, 1, 64, 64), 0.5)
    out = gaussian_noise(x, 0.1, torch.Generator().manual_seed(0))
    assert (out - x).std().item() == pytest.approx(0.1, rel=0.05)


def test_bad_strengths_are_refused_with_the_offending_config():
    with pytest.raises(ValueError, match="scale range"):
        AugmentConfig(scale=(1.2, 0.9))
    with pytest.raises(ValueError, match="must be >= 0"):
        AugmentConfig(noise_std=-1.0)


def test_digits_are_not_flipped_by_default_but_cifar_photos_are():
    assert default_augment("digits").hflip is False
    assert default_augment("cifar10").hflip is True
