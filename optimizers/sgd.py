"""Momentum SGD baselines: SGD (l2 in the gradient, == torch.optim.SGD) and SGDW (decoupled decay)."""
from __future__ import annotations

from typing import Any

import torch

from .base import ScheduledOptimizer, check_nonnegative
from .tensor_ops import FOREACH, PER_TENSOR, group_by_device_and_dtype


def sgd_update(ops, params, grads, momentum_buffers, *, lr: float, momentum: float, wd: float | None, eta: float,
               decoupled: bool) -> None:
    """Heavy-ball step on tensors (PER_TENSOR), lists (FOREACH) or member rows (BROADCAST), in torch.optim.SGD's
    op order. wd None: no weight decay (a caller with per-member tensors cannot ask `wd != 0`)."""
    if wd is not None:
        if decoupled:
            ops.mul_(params, 1 - eta * wd)
        else:
            grads = ops.add(grads, params, alpha=wd)
    if momentum != 0:
        # Buffers start at zero, so the first step leaves g in them, as torch's clone does.
        ops.mul_(momentum_buffers, momentum)
        ops.add_(momentum_buffers, grads)
        grads = momentum_buffers
    ops.add_(params, grads, alpha=-lr)


class SGD(ScheduledOptimizer):
    """b <- momentum*b + (g + lambda*w); w <- w - lr*b. == torch.optim.SGD(momentum, weight_decay), no dampening.

    State: `momentum_buffer` (when momentum != 0). foreach=None means foreach=True.
    """

    decoupled = False
    weight_decay_convention = "torch"

    def __init__(self, params, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0,
                 *, foreach: bool | None = None) -> None:
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, foreach=foreach)
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        check_nonnegative("momentum", group["momentum"])

    def _step_group(self, group, params, grads) -> None:
        momentum = group["momentum"]
        buffers = []
        if momentum != 0:
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                buffers.append(state["momentum_buffer"])
        else:
            buffers = [None] * len(params)
        hyper = dict(lr=group["lr"], momentum=momentum, wd=group["weight_decay"] or None,
                     eta=self.schedule_multiplier(group), decoupled=self.decoupled)
        if group["foreach"]:
            for (p_, g_, b_), _ in group_by_device_and_dtype([params, grads, buffers]):
                sgd_update(FOREACH, p_, g_, b_, **hyper)
        else:
            for p, g, b in zip(params, grads, buffers):
                sgd_update(PER_TENSOR, p, g, b, **hyper)


class SGDW(SGD):
    """Loshchilov & Hutter's SGDW: b <- momentum*b + g; w <- (1 - eta_t*lambda) w - lr*b.

    The buffer holds raw gradients, as in torch.optim.SGD, so SGDW with lambda = 0 is SGD.
    """

    decoupled = True
    weight_decay_convention = "paper"
