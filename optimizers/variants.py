"""The named Adam variants of SPEC.md: AdamCore plus a decay rule each."""
from __future__ import annotations

from .adam_core import AdamCore
from .decay_rules import DecayRule, DecoupledDecay, L2Penalty, PreconditionedProximalDecay, ProximalDecay


class Adam(AdamCore):
    """w <- w - u_t. No weight decay: `weight_decay` may only be 0, and a group's `weight_decay` key is ignored."""

    decay_rule = DecayRule()

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, *, foreach: bool | None = None) -> None:
        if weight_decay != 0:
            raise ValueError(f"Adam has no weight decay (got weight_decay={weight_decay}); use AdamL2, AdamW, "
                             "DecoupledAdamW, ProxAdam or AdamP")
        super().__init__(params, lr, betas, eps, 0.0, foreach=foreach)


class AdamL2(AdamCore):
    """g <- g + lambda*w, then Adam; == torch.optim.Adam(weight_decay=lambda)."""

    decay_rule = L2Penalty()


class AdamW(AdamCore):
    """PyTorch form: w <- (1 - alpha*eta_t*lambda) w - u_t; == torch.optim.AdamW."""

    decay_rule = DecoupledDecay(scale_by_lr=True)


class DecoupledAdamW(AdamCore):
    """Paper form (Loshchilov & Hutter 2019): w <- (1 - eta_t*lambda) w - u_t; lambda_paper = alpha*lambda_torch."""

    decay_rule = DecoupledDecay(scale_by_lr=False)


class ProxAdam(AdamCore):
    """Zhuang et al. 2022: w <- (w - u_t) / (1 + lambda*eta_t)."""

    decay_rule = ProximalDecay()


class AdamP(AdamCore):
    """The blog's variant: w <- (w - u_t) / (1 + alpha*eta_t*lambda / D_t), elementwise.

    Not the AdamP of Heo et al. 2021 (clovaai/AdamP, timm), which is an unrelated optimizer.
    """

    decay_rule = PreconditionedProximalDecay()
