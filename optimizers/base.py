"""Shared plumbing for this package's optimizers: validation, schedule multiplier, closure, grad collection."""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.optim import Optimizer


def _is_real(value: Any) -> bool:
    # Tensors are refused: a tensor lr/beta would make every step read it back from the device.
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_nonnegative(name: str, value: Any) -> None:
    """ValueError unless value is a finite real number >= 0 (NaN fails `>= 0`)."""
    if not _is_real(value) or not value >= 0 or math.isinf(value):
        raise ValueError(f"{name} must be a finite float >= 0, got {value!r}")


def check_betas(betas: Any) -> None:
    if isinstance(betas, (str, bytes)) or not isinstance(betas, Sequence) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2) with each in [0, 1), got {betas!r}")
    for i, beta in enumerate(betas):
        if not _is_real(beta) or not 0.0 <= beta < 1.0:
            raise ValueError(f"betas[{i}] must be in [0, 1), got {beta!r}")


class ScheduledOptimizer(Optimizer):
    """Optimizer base whose groups carry `initial_lr`, so eta_t = lr / initial_lr follows torch LR schedulers.

    Subclasses define `_check_group(group)` and `_step_group(group, params, grads)`. Figures, conversions
    and config checks read two facts from the class: `weight_decay_convention` ("torch": the decay is
    scaled by lr; "paper": it is not, lambda_paper = lr * lambda_torch; None: no weight decay), which a
    concrete class must state (an Adam variant's comes from its decay rule), and `display_name`, the
    class's name unless it says otherwise.
    """

    display_name: str

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "display_name" not in cls.__dict__:
            cls.display_name = cls.__name__

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self._check_group(group)
        # Plain floats keep the scalar arithmetic in double precision (numpy float32 scalars would not).
        for key in ("lr", "weight_decay", "eps", "momentum"):
            if key in group:
                group[key] = float(group[key])
        if "betas" in group:
            group["betas"] = tuple(float(beta) for beta in group["betas"])
        # Schedulers also setdefault this, so whichever comes first records the same base lr.
        group.setdefault("initial_lr", group["lr"])
        if group["foreach"] is None:
            group["foreach"] = True

    def _check_group(self, group: dict[str, Any]) -> None:
        check_nonnegative("lr", group["lr"])
        check_nonnegative("weight_decay", group["weight_decay"])

    @staticmethod
    def schedule_multiplier(group: dict[str, Any]) -> float:
        """eta_t = lr / initial_lr; 1.0 when the base lr is 0 (nothing to scale)."""
        initial_lr = group["initial_lr"]
        return group["lr"] / initial_lr if initial_lr else 1.0

    def _params_with_grads(self, group: dict[str, Any]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        params, grads = [], []
        for p in group["params"]:
            grad = p.grad
            if grad is None:
                continue
            if grad.is_sparse:
                raise ValueError(f"{type(self).__name__} does not support sparse gradients; "
                                 "use dense gradients (e.g. nn.Embedding(sparse=False)) or torch.optim.SparseAdam")
            if p.is_complex():
                raise ValueError(f"{type(self).__name__} does not support complex parameters; "
                                 "optimize torch.view_as_real(param) instead")
            params.append(p)
            grads.append(grad)
        return params, grads

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every parameter that has a gradient; returns closure() if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads = self._params_with_grads(group)
            if params:
                self._step_group(group, params, grads)
        return loss

    def _step_group(self, group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        raise NotImplementedError
