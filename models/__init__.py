"""CIFAR ResNet models."""

from models.resnet import (
    BasicBlock,
    CifarResNet,
    PackedLinear,
    ShortcutA,
    blocks_per_stage,
    build_model,
    count_parameters,
    resnet20,
    resnet32,
    resnet44,
    resnet56,
    resnet110,
)

__all__ = [
    "BasicBlock",
    "CifarResNet",
    "PackedLinear",
    "ShortcutA",
    "blocks_per_stage",
    "build_model",
    "count_parameters",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
]
