"""CIFAR ResNets (He et al. 2016, section 4.2): depth 6n+2, option-A shortcuts, optional BatchNorm.

`members=K` builds K of them as one network (HFTA's fused models, Wang et al. MLSys 2021): every
convolution is a grouped one with K groups over K x the channels, BatchNorm runs over K x the
channels (its statistics are per channel, so per member), and the head is K linear maps. The image
is shared, so the stem is a plain convolution to K x 16 channels. Member k's weights are slice k of
each packed tensor seen as [K, ...] (experiments/packed_models.py binds them to the members' own).
"""

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


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1, members: int = 1) -> nn.Conv2d:
    """A 3x3 conv of each of `members` models: channels are per member, groups = members."""
    return nn.Conv2d(members * in_channels, members * out_channels, kernel_size=3, stride=stride, padding=1, bias=False,
                     groups=members)


def _pad_member_channels(x: torch.Tensor, members: int, pad: int) -> torch.Tensor:
    """Zero channels on both sides of each member's block of channels, keeping x's memory format."""
    n, c, h, w = x.shape
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        # NHWC memory: member blocks are runs of the innermost dimension, so pad it there.
        y = F.pad(x.permute(0, 2, 3, 1).reshape(n, h, w, members, c // members), (pad, pad))
        return y.reshape(n, h, w, -1).permute(0, 3, 1, 2)
    return F.pad(x.reshape(n, members, c // members, h, w), (0, 0, 0, 0, pad, pad)).reshape(n, -1, h, w)


class ShortcutA(nn.Module):
    """Parameter-free option-A shortcut: stride-2 subsampling, then zero channels split evenly on both sides."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, members: int = 1):
        super().__init__()
        if out_channels < in_channels or (out_channels - in_channels) % 2:
            raise ValueError(f"option-A shortcut needs an even channel increase; got {in_channels}->{out_channels}")
        self.stride = stride
        self.pad = (out_channels - in_channels) // 2
        self.members = members

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            # x[:, :, ::s, ::s] exactly (a 1x1 average), but the backward of a strided slice builds an NCHW
            # gradient: under channels_last the ReLU backward and gradient sum it meets then run strided,
            # several times slower. Pooling's backward keeps the input's memory format.
            x = F.avg_pool2d(x, kernel_size=1, stride=self.stride)
        if self.members > 1:
            return _pad_member_channels(x, self.members, self.pad)
        return F.pad(x, (0, 0, 0, 0, self.pad, self.pad))


class PackedLinear(nn.Module):
    """`members` linear maps in_features -> out_features: [N, members * in] to [members, N, out]."""

    def __init__(self, members: int, in_features: int, out_features: int):
        super().__init__()
        self.members = members
        self.weight = nn.Parameter(torch.empty(members, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(members, out_features))
        for k in range(members):  # each member as nn.Linear initialises its own
            nn.init.kaiming_uniform_(self.weight[k], a=5**0.5)
            bound = in_features**-0.5
            nn.init.uniform_(self.bias[k], -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_member = x.view(x.shape[0], self.members, -1).transpose(0, 1)  # [members, N, in]
        return torch.baddbmm(self.bias.unsqueeze(1), per_member, self.weight.transpose(1, 2))


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection; ReLU after the sum."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, batch_norm: bool, members: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride, members)
        self.bn1 = _norm(members * out_channels, batch_norm)
        self.conv2 = _conv3x3(out_channels, out_channels, members=members)
        self.bn2 = _norm(members * out_channels, batch_norm)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = ShortcutA(in_channels, out_channels, stride, members)
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
    """ResNet-(6n+2) for 32x32 inputs: 3x3 stem, 3 stages of n blocks (16/32/64 channels), avg pool, linear.

    members=K: K such networks as one (see the module docstring); logits are then [K, N, classes].
    """

    def __init__(self, depth: int = 20, num_classes: int = 10, batch_norm: bool = True, members: int = 1):
        super().__init__()
        n = blocks_per_stage(depth)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1; got {num_classes}")
        if isinstance(members, bool) or not isinstance(members, int) or members < 1:
            raise ValueError(f"members must be an integer >= 1; got {members!r}")
        self.depth = depth
        self.batch_norm = batch_norm
        self.num_classes = num_classes
        self.members = members

        # The image is shared, so each member's stem reads all 3 channels: a plain conv to members x 16.
        self.conv1 = nn.Conv2d(3, members * STAGE_WIDTHS[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = _norm(members * STAGE_WIDTHS[0], batch_norm)
        in_channels = STAGE_WIDTHS[0]
        stages = []
        for stage_index, width in enumerate(STAGE_WIDTHS):
            blocks = []
            for block_index in range(n):
                stride = 2 if stage_index > 0 and block_index == 0 else 1
                blocks.append(BasicBlock(in_channels, width, stride, batch_norm, members))
                in_channels = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        if members == 1:
            self.fc: nn.Module = nn.Linear(STAGE_WIDTHS[-1], num_classes)
        else:
            self.fc = PackedLinear(members, STAGE_WIDTHS[-1], num_classes)
        self.reset_parameters()

    def packed(self, members: int) -> "CifarResNet":
        """`members` networks of this architecture as one."""
        return CifarResNet(self.depth, self.num_classes, self.batch_norm, members)

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan_in, ReLU gain) conv and linear weights, as in the reference CIFAR ResNet code."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(module, PackedLinear):
                for weight in module.weight:
                    nn.init.kaiming_normal_(weight, mode="fan_in", nonlinearity="relu")
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
        members = f", members={self.members}" if self.members > 1 else ""
        return f"depth={self.depth}, batch_norm={self.batch_norm}, num_classes={self.num_classes}{members}"


def build_model(depth: int, batch_norm: bool, num_classes: int, members: int = 1) -> nn.Module:
    """Build a CIFAR ResNet of the given depth (6n+2); members > 1 packs that many into one (grouped convs)."""
    return CifarResNet(depth=depth, num_classes=num_classes, batch_norm=batch_norm, members=members)


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
