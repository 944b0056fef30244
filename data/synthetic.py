"""A CIFAR-shaped synthetic dataset that a small CNN learns in one epoch (for smoke tests without data)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from data.dataset import ImageDataset

_SIGNAL = 45.0  # template amplitude, in uint8 grey levels
_TINT = 25.0  # per-class colour shift std, in uint8 grey levels
_NOISE = 40.0  # per-pixel noise std, in uint8 grey levels


def _labels(n: int, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    # Balanced: every class appears n // num_classes or one more times, in random order.
    return (torch.arange(n) % num_classes)[torch.randperm(n, generator=generator)]


def make_synthetic(n_train: int, n_test: int, num_classes: int = 10, seed: int = 0) -> ImageDataset:
    """Images = class template (random smooth 3x32x32 pattern) + class colour tint + random brightness + noise.

    The tint makes the classes separable even after global average pooling, so small CNNs learn fast.
    """
    if n_train < 1 or n_test < 1 or num_classes < 2:
        raise ValueError(
            f"synthetic data needs n_train, n_test >= 1 and num_classes >= 2; got {n_train}, {n_test}, {num_classes}"
        )
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(num_classes, 3, 4, 4, generator=g)
    templates = F.interpolate(coarse, size=(32, 32), mode="bicubic", align_corners=False)
    templates = templates / templates.std(dim=(1, 2, 3), keepdim=True)
    tints = _TINT * torch.randn(num_classes, 3, 1, 1, generator=g)

    def images(labels: torch.Tensor) -> torch.Tensor:
        n = labels.numel()
        brightness = 20.0 * torch.randn(n, 1, 1, 1, generator=g)
        noise = _NOISE * torch.randn(n, 3, 32, 32, generator=g)
        pixels = 128.0 + brightness + _SIGNAL * templates[labels] + tints[labels] + noise
        return pixels.round().clamp(0, 255).to(torch.uint8)

    train_y = _labels(n_train, num_classes, g)
    test_y = _labels(n_test, num_classes, g)
    train_x = images(train_y)
    test_x = images(test_y)
    as_unit = train_x.to(torch.float64) / 255.0
    mean = tuple(as_unit.mean(dim=(0, 2, 3)).tolist())
    std = tuple(as_unit.std(dim=(0, 2, 3)).tolist())
    return ImageDataset(
        train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y,
        classes=[f"class_{i}" for i in range(num_classes)], mean=mean, std=std, name="synthetic",
    )
