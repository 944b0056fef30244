"""Weight decay between the PyTorch convention (decay scaled by lr) and the paper's (decay independent of lr).

PyTorch AdamW shrinks by (1 - lr*wd_torch), the paper form by (1 - eta_t*wd_paper); at a base lr
they agree when wd_paper = lr * wd_torch.
"""
from __future__ import annotations

from .base import check_nonnegative

CONVENTIONS = ("torch", "paper")


def convert_weight_decay(wd, lr, source: str, to: str):
    """`wd` in convention `source` expressed in convention `to` (torch or paper), at base lr `lr`.

    lambda_paper = lr * lambda_torch. Elementwise on numpy arrays and pandas Series too; no checks, so
    that it can; the scalar functions below check their arguments.
    """
    for convention in (source, to):
        if convention not in CONVENTIONS:
            raise ValueError(f"unknown weight-decay convention {convention!r}; use one of {', '.join(CONVENTIONS)}")
    if source == to:
        return wd
    return wd * lr if source == "torch" else wd / lr


def wd_torch_to_paper(wd: float, lr: float) -> float:
    """Paper-form weight decay equal to PyTorch-form `wd` at base learning rate `lr`."""
    check_nonnegative("weight_decay", wd)
    check_nonnegative("lr", lr)
    return convert_weight_decay(wd, lr, "torch", "paper")


def wd_paper_to_torch(wd: float, lr: float) -> float:
    """PyTorch-form weight decay equal to paper-form `wd` at base learning rate `lr` (> 0)."""
    check_nonnegative("weight_decay", wd)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"lr must be > 0 to convert paper-form weight decay to PyTorch form, got {lr!r}")
    return convert_weight_decay(wd, lr, "paper", "torch")
