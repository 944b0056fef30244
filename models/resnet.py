"""CIFAR ResNets (He et al. 2016, section 4.2): depth 6n+2, option-A shortcuts, optional BatchNorm."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

STAGE_WIDTHS = (16, 32, 64)
VALID_DEPTHS_HINT = "6n+2, e.g. 20, 32, 44, 56, 110"


def blocks_per_stage(depth: int) -> int:
    """Return n for depth = 6n + 2; raise ValueError for any other depth."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6 != 0:
        raise ValueError(f"CIFAR ResNet depth must be {VALID_DEPTHS_HINT}; got {depth!r}")
    return (depth - 2) // 6


def _norm(channels: int, batch_norm: bool) -> nn.Module:
    # Identity holds no parameters or buffers, so the BN-free model is exactly convs + linear head.
    return nn.BatchNorm2d(channels) if batch_norm else nn.Identity()


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class ShortcutA(nn.Module):
    """Parameter-free option-A shortcut: stride-2 subsampling, then zero channels split evenly on both sides."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        if out_channels < in_channels or (out_channels - in_channels) % 2:
            raise ValueError(f"option-A shortcut needs an even channel increase; got {in_channels}->{out_channels}")
        self.stride = stride
        self.pad = (out_channels - in_channels) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            # x[:, :, ::s, ::s] exactly (a 1x1 average), but the backward of a strided slice builds an NCHW
            # gradient: under channels_last the ReLU backward and gradient sum it meets then run strided,
            # several times slower. Pooling's backward keeps the input's memory format.
            x = F.avg_pool2d(x, kernel_size=1, stride=self.stride)
        return F.pad(x, (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection; ReLU after the sum."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, batch_norm: bool):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = _norm(out_channels, batch_norm)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = _norm(out_channels, batch_norm)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = ShortcutA(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place, as torchvision's ResNet: neither conv nor BatchNorm backward needs its output, and
        # activations are the bulk of a CPU step's memory traffic. Under torch.func.vmap `out` is always
        # batched (it comes from the batched weights), which in-place ops need.
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out, inplace=True)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: 3x3 stem, 3 stages of n blocks (16/32/64 channels), avg pool, linear."""

    def __init__(self, depth: int = 20, num_classes: int = 10, batch_norm: bool = True):
        super().__init__()
        n = blocks_per_stage(depth)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1; got {num_classes}")
        self.depth = depth
        self.batch_norm = batch_norm
        self.num_classes = num_classes

        self.conv1 = _conv3x3(3, STAGE_WIDTHS[0])
        self.bn1 = _norm(STAGE_WIDTHS[0], batch_norm)
        in_channels = STAGE_WIDTHS[0]
        stages = []
        for stage_index, width in enumerate(STAGE_WIDTHS):
            blocks = []
            for block_index in range(n):
                stride = 2 if stage_index > 0 and block_index == 0 else 1
                blocks.append(BasicBlock(in_channels, width, stride, batch_norm))
                in_channels = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(STAGE_WIDTHS[-1], num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan_in, ReLU gain) conv and linear weights, as in the reference CIFAR ResNet code."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # The linear bias keeps torch's default uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) init.

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.layer3(self.layer2(self.layer1(out)))
        # Global average pool. Bit-identical to mean(dim=(2, 3)), which is this sum and division, but the
        # backward is a broadcast view rather than mean's materialised NCHW gradient (see ShortcutA).
        out = out.sum(dim=(2, 3)) / (out.shape[2] * out.shape[3])
        return self.fc(out)

    def extra_repr(self) -> str:
        return f"depth={self.depth}, batch_norm={self.batch_norm}, num_classes={self.num_classes}"


def build_model(depth: int, batch_norm: bool, num_classes: int) -> nn.Module:
    """Build a CIFAR ResNet of the given depth (6n+2)."""
    return CifarResNet(depth=depth, num_classes=num_classes, batch_norm=batch_norm)


def resnet20(batch_norm: bool = True, num_classes: int = 10) -> CifarResNet:
    return CifarResNet(20, num_classes, batch_norm)


def resnet32(batch_norm: bool = True, num_classes: int = 10) -> CifarResNet:
    return CifarResNet(32, num_classes, batch_norm)


def resnet44(batch_norm: bool = True, num_classes: int = 10) -> CifarResNet:
    return CifarResNet(44, num_classes, batch_norm)


def resnet56(batch_norm: bool = True, num_classes: int = 10) -> CifarResNet:
    return CifarResNet(56, num_classes, batch_norm)


def resnet110(batch_norm: bool = True, num_classes: int = 10) -> CifarResNet:
    return CifarResNet(110, num_classes, batch_norm)


def count_parameters(model: nn.Module) -> int:
    """Total number of parameter elements (trainable or not)."""
    return sum(p.numel() for p in model.parameters())
