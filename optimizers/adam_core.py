"""The one Adam implementation; the weight-decay treatment is a pluggable DecayRule (decay_rules.py).

The Adam arithmetic reproduces torch.optim.Adam's op order (non-capturable path), so AdamL2 and
AdamW match torch.optim.Adam(weight_decay) and torch.optim.AdamW to the last bit.
"""
from __future__ import annotations

from typing import Any

import torch

from .base import ScheduledOptimizer, check_betas, check_nonnegative
from .decay_rules import DecayRule
from .tensor_ops import FOREACH, PER_TENSOR, group_by_device_and_dtype


def adam_update(ops, params, grads, exp_avgs, exp_avg_sqs, *, beta1: float, beta2: float, eps: float,
                neg_step_size, bias_correction2_sqrt, lr: float, eta: float, wd: float,
                rule: DecayRule | None) -> None:
    """One Adam step on tensors (PER_TENSOR) or lists (FOREACH); neg_step_size = -lr / (1 - beta1^t)."""
    if rule is not None:
        grads = rule.penalise_grads(ops, params, grads, lr, eta, wd)
        rule.before_step(ops, params, lr, eta, wd)
    ops.lerp_(exp_avgs, grads, 1 - beta1)
    ops.mul_(exp_avg_sqs, beta2)
    ops.addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    denom = ops.sqrt(exp_avg_sqs)
    ops.div_(denom, bias_correction2_sqrt)
    ops.add_(denom, eps)
    ops.addcdiv_(params, exp_avgs, denom, neg_step_size)
    if rule is not None:
        rule.after_step(ops, params, denom, lr, eta, wd)


def bias_corrections(steps: list[float], lr: float, beta1: float, beta2: float):
    """(-lr / (1 - beta1^t), sqrt(1 - beta2^t)) per tensor; plain floats when every step count agrees."""
    first = steps[0]
    if steps.count(first) == len(steps):
        return -(lr / (1 - beta1**first)), (1 - beta2**first) ** 0.5
    return [-(lr / (1 - beta1**t)) for t in steps], [(1 - beta2**t) ** 0.5 for t in steps]


class _ConventionOfDecayRule:
    """AdamCore.weight_decay_convention: its decay rule's, read on the class."""

    def __get__(self, obj, owner) -> str | None:
        return owner.decay_rule.weight_decay_convention


class AdamCore(ScheduledOptimizer):
    """Adam with `decay_rule` deciding how `weight_decay` acts.

    State per parameter (created on its first gradient): `step` (float, steps taken),
    `exp_avg`, `exp_avg_sq`. eta_t = lr / initial_lr, so torch LR schedulers drive the schedule.
    foreach=None means foreach=True.
    """

    decay_rule: DecayRule = DecayRule()
    weight_decay_convention = _ConventionOfDecayRule()

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, *, foreach: bool | None = None) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=foreach)
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        check_betas(group["betas"])
        check_nonnegative("eps", group["eps"])

    def _step_group(self, group, params, grads) -> None:
        exp_avgs, exp_avg_sqs, steps = [], [], []
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = 0.0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1.0
            steps.append(state["step"])
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])

        beta1, beta2 = group["betas"]
        lr, wd = group["lr"], group["weight_decay"]
        hyper = dict(beta1=beta1, beta2=beta2, eps=group["eps"], lr=lr, eta=self.schedule_multiplier(group),
                     wd=wd, rule=self.decay_rule if wd != 0 else None)
        if group["foreach"]:
            for (p_, g_, m_, v_), indices in group_by_device_and_dtype([params, grads, exp_avgs, exp_avg_sqs]):
                neg_step, bc2_sqrt = bias_corrections([steps[i] for i in indices], lr, beta1, beta2)
                adam_update(FOREACH, p_, g_, m_, v_, neg_step_size=neg_step, bias_correction2_sqrt=bc2_sqrt, **hyper)
        else:
            for p, g, m, v, t in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
                neg_step, bc2_sqrt = bias_corrections([t], lr, beta1, beta2)
                adam_update(PER_TENSOR, p, g, m, v, neg_step_size=neg_step, bias_correction2_sqrt=bc2_sqrt, **hyper)
