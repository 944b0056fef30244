"""Many optimizers of one kind as one update of stacked members (HFTA-style fused optimizers).

A pack keeps its members' parameters, gradients and optimizer state as rows of [K, P] buffers
(experiments/packed_models.py). A fused update steps a block of those rows at once. What differs
between the block's members (lr = alpha * eta_t, eta_t, weight decay) comes as [k, 1] float64
tensors, one row per member, computed on the device; what they share (the decay rule, betas, eps,
momentum) is fixed per update object, which is why `fused_form` keys members by it.

The arithmetic is the one core's (adam_core.adam_update, sgd.sgd_update) over tensor_ops.BROADCAST
ops: every row gets the operations its own optimizer applies, in the same order, with each float64
hyperparameter cast to the parameters' dtype as a Python scalar is inside a kernel. On a CPU a
member's row therefore ends bit for bit where its own optimizer ends (tests/test_fused.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .adam_core import AdamCore, adam_update
from .decay_rules import DecayRule
from .sgd import SGD, sgd_update
from .tensor_ops import BROADCAST


@dataclass(frozen=True)
class FusedAdam:
    """AdamCore's step for members that share one decay rule, betas and eps."""

    rule: DecayRule
    betas: tuple[float, float]
    eps: float
    # The per-parameter state of AdamCore, in its state_dict's names; "step" is kept by the caller.
    state_keys = ("exp_avg", "exp_avg_sq")
    counts_steps = True

    def update(self, params, grads, state, *, t, lr, eta, wd, decays: bool) -> None:
        """params, grads, state[i]: [k, n] rows; t: [1] float64 steps taken (this one included);
        lr = alpha * eta_t, eta, wd: [k, 1] float64. decays: False when every row's wd is 0."""
        beta1, beta2 = self.betas
        # As adam_core.bias_corrections, on the device: t never leaves it.
        neg_step_size = -(lr / (1 - beta1**t))
        bias_correction2_sqrt = (1 - beta2**t) ** 0.5
        adam_update(BROADCAST, params, grads, state[0], state[1], beta1=beta1, beta2=beta2, eps=self.eps,
                    neg_step_size=neg_step_size, bias_correction2_sqrt=bias_correction2_sqrt, lr=lr, eta=eta, wd=wd,
                    rule=self.rule if decays else None)


@dataclass(frozen=True)
class FusedSGD:
    """SGD's / SGDW's step for members that share momentum and the decay form."""

    decoupled: bool
    momentum: float
    counts_steps = False

    @property
    def state_keys(self) -> tuple[str, ...]:
        return ("momentum_buffer",) if self.momentum != 0 else ()

    def update(self, params, grads, state, *, t, lr, eta, wd, decays: bool) -> None:
        sgd_update(BROADCAST, params, grads, state[0] if state else None, lr=lr, momentum=self.momentum,
                   wd=wd if decays else None, eta=eta, decoupled=self.decoupled)


@dataclass(frozen=True)
class FusedGroup:
    """One param group of a member's optimizer, as a fused update reads it."""

    params: list[torch.Tensor]
    alpha: float  # the group's base lr (initial_lr): lr = alpha * eta_t
    weight_decay: float


def fused_form(optimizer: torch.optim.Optimizer) -> tuple[FusedAdam | FusedSGD, list[FusedGroup]] | None:
    """The fused update that steps like `optimizer`, and its groups; None when there is none.

    There is one for this package's Adam variants (any AdamCore, by its class's decay rule) and
    SGD/SGDW, when all param groups share betas and eps (momentum for SGD). Members whose fused
    updates compare equal can be stepped as one.
    """
    groups = optimizer.param_groups
    if not groups:
        return None

    def shared(key: str) -> Any:
        values = {tuple(g[key]) if isinstance(g[key], (list, tuple)) else g[key] for g in groups}
        return values.pop() if len(values) == 1 else None

    if isinstance(optimizer, AdamCore):
        betas, eps = shared("betas"), shared("eps")
        if betas is None or eps is None:
            return None
        update: FusedAdam | FusedSGD = FusedAdam(type(optimizer).decay_rule, tuple(betas), eps)
    elif isinstance(optimizer, SGD):
        momentum = shared("momentum")
        if momentum is None:
            return None
        update = FusedSGD(type(optimizer).decoupled, momentum)
    else:
        return None
    # Adam takes no weight_decay argument and ignores a group's (its decay rule does nothing).
    return update, [FusedGroup(list(g["params"]), float(g["initial_lr"]), float(g.get("weight_decay", 0.0)))
                    for g in groups]
