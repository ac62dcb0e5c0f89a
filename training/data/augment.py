"""Batched training-time augmentation in torch: flip, padded random crop, rotation/scale jitter, noise.

``Augmenter`` is an ``nn.Module`` that works on float batches in [0, 1] (before normalisation, so the
padding and the area a rotation uncovers are black like the background of the scans). It is the
identity in ``eval()`` mode: augmentation is applied in training only, never in evaluation. All
randomness comes from an explicit ``torch.Generator`` so a seed reproduces the exact batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class AugmentConfig:
    """Which augmentations run and how strong; all off means the identity."""

    hflip: bool = False  # mirror images: wrong for digits and text, right for natural photos
    crop_padding: int = 2  # pad by this many pixels, then crop back at a random offset
    rotation_deg: float = 10.0  # uniform in [-rotation_deg, rotation_deg]
    scale: tuple[float, float] = (0.9, 1.1)  # zoom factor range
    noise_std: float = 0.02  # gaussian noise in [0, 1] pixel units

    def __post_init__(self) -> None:
        if self.crop_padding < 0 or self.rotation_deg < 0 or self.noise_std < 0:
            raise ValueError(f"augmentation strengths must be >= 0: {self}")
        low, high = self.scale
        if not 0 < low <= high:
            raise ValueError(f"scale range must satisfy 0 < low <= high, got {self.scale}")

    @classmethod
    def none(cls) -> AugmentConfig:
        return cls(hflip=False, crop_padding=0, rotation_deg=0.0, scale=(1.0, 1.0), noise_std=0.0)


class Augmenter(nn.Module):
    """Applies ``AugmentConfig`` to a float [B, C, H, W] batch in training mode; identity in eval mode."""

    def __init__(self, config: AugmentConfig, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        cfg, gen = self.config, self.generator
        if cfg.hflip:
            x = random_hflip(x, gen)
        if cfg.crop_padding > 0:
            x = random_crop(x, cfg.crop_padding, gen)
        if cfg.rotation_deg > 0 or cfg.scale != (1.0, 1.0):
            x = random_affine(x, cfg.rotation_deg, cfg.scale, gen)
        if cfg.noise_std > 0:
            x = gaussian_noise(x, cfg.noise_std, gen)
        return x


def random_hflip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = (torch.rand(x.shape[0], generator=gen) < 0.5).to(x.device)  # (B,)
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def random_crop(x: torch.Tensor, padding: int, gen: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``padding`` and crop each image back to H x W at its own random offset."""
    b, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))  # (B, C, H+2p, W+2p)
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=gen).to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=gen).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (B, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (B, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None]  # (B, 1, 1)
    out = padded.permute(0, 2, 3, 1)[batch, rows, cols]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)


def random_affine(
    x: torch.Tensor, rotation_deg: float, scale: tuple[float, float], gen: torch.Generator
) -> torch.Tensor:
    """Rotate by a uniform angle and zoom by a uniform factor per image (bilinear, zero fill).

    ``affine_grid`` works in coordinates normalised to [-1, 1] on each axis, so on a non-square image
    the rotation is scaled by the aspect ratio: otherwise it would stretch and shear the content."""
    b, _, h, w = x.shape
    angle = (torch.rand(b, generator=gen) * 2 - 1) * math.radians(rotation_deg)  # (B,)
    zoom = scale[0] + torch.rand(b, generator=gen) * (scale[1] - scale[0])  # (B,)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom  # grid maps output -> input coordinates
    zeros = torch.zeros(b)
    theta = torch.stack(
        [torch.stack([cos, -sin * (h / w), zeros], 1), torch.stack([sin * (w / h), cos, zeros], 1)], 1
    )  # (B, 2, 3)
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)  # (B, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def gaussian_noise(x: torch.Tensor, std: float, gen: torch.Generator) -> torch.Tensor:
    """Add N(0, std^2) per pixel and clamp back to [0, 1]."""
    noise = torch.randn(x.shape, generator=gen).to(x)
    return (x + std * noise).clamp(0.0, 1.0)


def default_augment(dataset: str) -> AugmentConfig:
    """Per-dataset defaults: CIFAR photos get flips; digit scans must not (a folder's owner opts in)."""
    return AugmentConfig(hflip=dataset == "cifar10")
