"""Where weight decay enters the Adam update (SPEC.md table). One rule object per variant.

Each hook receives `ops` (tensor_ops.FOREACH or PER_TENSOR) and either lists of tensors or single
tensors to match. lr = group lr = alpha * eta_t; eta = eta_t = lr / initial_lr; wd = lambda.
The core calls the hooks only when wd != 0.
"""
from __future__ import annotations


class DecayRule:
    """No regularisation (plain Adam). Subclasses override the hook(s) they need, and say whether lambda is
    scaled by the learning rate (weight_decay_convention "torch") or not ("paper")."""

    weight_decay_convention: str | None = None

    def penalise_grads(self, ops, params, grads, lr: float, eta: float, wd: float):
        """Before the moment updates; returns the gradients the moments see."""
        return grads

    def before_step(self, ops, params, lr: float, eta: float, wd: float) -> None:
        """On w_{t-1}, before w <- w - u_t."""

    def after_step(self, ops, params, denom, lr: float, eta: float, wd: float) -> None:
        """On w_{t-1} - u_t; denom is D_t and may be overwritten."""


class L2Penalty(DecayRule):
    """g <- g + lambda*w (torch.optim.Adam(weight_decay=lambda))."""

    weight_decay_convention = "torch"

    def penalise_grads(self, ops, params, grads, lr, eta, wd):
        return ops.add(grads, params, alpha=wd)


class DecoupledDecay(DecayRule):
    """w <- (1 - s*lambda) w - u_t with s = alpha*eta_t (PyTorch AdamW) or s = eta_t (paper form)."""

    def __init__(self, scale_by_lr: bool) -> None:
        self.scale_by_lr = scale_by_lr
        self.weight_decay_convention = "torch" if scale_by_lr else "paper"

    def before_step(self, ops, params, lr, eta, wd):
        ops.mul_(params, 1 - (lr if self.scale_by_lr else eta) * wd)


class ProximalDecay(DecayRule):
    """w <- (w - u_t) / (1 + lambda*eta_t): proximal step for (lambda/2)||w||^2 (Zhuang et al. 2022)."""

    weight_decay_convention = "paper"

    def after_step(self, ops, params, denom, lr, eta, wd):
        ops.div_(params, 1 + wd * eta)


class PreconditionedProximalDecay(DecayRule):
    """w <- (w - u_t) / (1 + alpha*eta_t*lambda / D_t), elementwise (the blog's AdamP)."""

    weight_decay_convention = "torch"

    def after_step(self, ops, params, denom, lr, eta, wd):
        # The blog's `p.div_(1 + lr*lmbda/D)`, built in denom's storage: 1/D, *lr*lmbda, +1.
        ops.reciprocal_(denom)
        ops.mul_(denom, lr * wd)
        ops.add_(denom, 1.0)
        ops.div_(params, denom)
