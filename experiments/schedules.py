"""Learning-rate schedules as per-step multipliers eta_t: on the host for torch's LambdaLR, on the device for packs.

`eta` (Python floats) and `eta_on_device` (a one-element tensor step) are the same function, op for op:
a pack's fused optimizer reads eta_t from the device, so a step never waits for the host and a
compiled step never sees a new Python number (tests/test_fused.py holds the two to each other).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

SCHEDULES = ("constant", "cosine", "multistep")


@dataclass(frozen=True)
class ScheduleSpec:
    """A schedule config as plain numbers, which a compiled step can read without tracing OmegaConf."""

    name: str
    warmup_epochs: float = 0.0
    min_factor: float = 0.0
    milestones: tuple[float, ...] = ()
    gamma: float = 1.0

    @classmethod
    def of(cls, cfg: "DictConfig | ScheduleSpec") -> "ScheduleSpec":
        if isinstance(cfg, ScheduleSpec):
            return cfg
        return cls(name=str(cfg.name), warmup_epochs=float(cfg.get("warmup_epochs", 0)),
                   min_factor=float(cfg.get("min_factor", 0.0)), milestones=tuple(cfg.get("milestones", ())),
                   gamma=float(cfg.get("gamma", 1.0)))


def _unknown(cfg) -> ValueError:
    return ValueError(f"unknown schedule {cfg.name!r}; choose {', '.join(SCHEDULES)}")


def eta(step: int, total_steps: int, steps_per_epoch: int, cfg: DictConfig | ScheduleSpec) -> float:
    """The schedule multiplier eta_t at optimizer step `step` (0-based)."""
    cfg = ScheduleSpec.of(cfg)
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
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
    raise _unknown(cfg)


def eta_on_device(step: torch.Tensor, total_steps: int, steps_per_epoch: int, cfg: ScheduleSpec) -> torch.Tensor:
    """`eta` of a one-element float64 tensor `step`, as a tensor on its device; no branch depends on its value."""
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    if cfg.name == "constant":
        after = torch.ones_like(step)
    elif cfg.name == "cosine":
        progress = (step - warmup) / max(1, total_steps - warmup)
        after = cfg.min_factor + (1 - cfg.min_factor) * 0.5 * (1 + torch.cos(math.pi * progress))
    elif cfg.name == "multistep":
        passed = torch.zeros_like(step)
        for m in cfg.milestones:
            passed = passed + (step >= int(m * total_steps)).to(step.dtype)
        after = torch.pow(cfg.gamma, passed)
    else:
        raise _unknown(cfg)
    if warmup == 0:
        return after
    return torch.where(step < warmup, (step + 1) / warmup, after)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: DictConfig, steps_per_epoch: int, epochs: int):
    total = steps_per_epoch * epochs
    spec = ScheduleSpec.of(cfg)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: eta(t, total, steps_per_epoch, spec))
