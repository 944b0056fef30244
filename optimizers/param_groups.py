"""Parameter groups with and without weight decay."""
from __future__ import annotations

from typing import Any

from torch import nn

from .base import check_nonnegative


def param_groups(model: nn.Module, weight_decay: float, exclude_norm_and_bias: bool = False) -> list[dict[str, Any]]:
    """Groups of the model's trainable parameters for an optimizer.

    Default: one group, everything decayed (as the post and Zhuang et al. do). With
    exclude_norm_and_bias, 1-D parameters (biases, norm-layer weights) go to a second group
    with weight_decay 0. Empty groups are left out.
    """
    check_nonnegative("weight_decay", weight_decay)
    params = [p for p in model.parameters() if p.requires_grad]
    if not exclude_norm_and_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    decayed = [p for p in params if p.ndim > 1]
    undecayed = [p for p in params if p.ndim <= 1]
    groups = [{"params": decayed, "weight_decay": weight_decay}, {"params": undecayed, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]
