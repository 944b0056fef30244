"""Learning-rate schedules as per-step multipliers eta_t, driven by torch's LambdaLR."""
from __future__ import annotations

import math

import torch
from omegaconf import DictConfig


def eta(step: int, total_steps: int, steps_per_epoch: int, cfg: DictConfig) -> float:
    """The schedule multiplier eta_t at optimizer step `step` (0-based)."""
    warmup = int(cfg.get("warmup_epochs", 0) * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    if cfg.name == "constant":
        return 1.0
    if cfg.name == "cosine":
        progress = (step - warmup) / max(1, total_steps - warmup)
        return cfg.min_factor + (1 - cfg.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))
    if cfg.name == "multistep":
        passed = sum(step >= int(m * total_steps) for m in cfg.milestones)
        return cfg.gamma**passed
    raise ValueError(f"unknown schedule {cfg.name!r}; choose constant, cosine or multistep")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: DictConfig, steps_per_epoch: int, epochs: int):
    total = steps_per_epoch * epochs
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: eta(t, total, steps_per_epoch, cfg))
