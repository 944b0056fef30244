"""Batched CIFAR augmentation on uint8 tensors: 4-pixel zero padding, random 32x32 crop, random h-flip."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pad_images(images_u8: torch.Tensor, padding: int = 4) -> torch.Tensor:
    """Zero-pad H and W on both sides (in uint8, before normalisation, like RandomCrop(padding=4) on PIL)."""
    return F.pad(images_u8, (padding, padding, padding, padding))


def crop_flip(
    padded: torch.Tensor, index: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor,
    size: int = 32,
) -> torch.Tensor:
    """Gather padded[index[i]] cropped at (top[i], left[i]) to size x size, mirrored where flip[i]; one kernel.

    padded: [N, C, H+2p, W+2p]; index, top, left, flip: [B] on padded's device. Returns [B, C, size, size].
    """
    offsets = torch.arange(size, device=padded.device)
    rows = top[:, None] + offsets  # [B, size]
    cols = left[:, None] + torch.where(flip[:, None], size - 1 - offsets, offsets)  # [B, size]
    channels = torch.arange(padded.shape[1], device=padded.device)
    return padded[index[:, None, None, None], channels[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]]
