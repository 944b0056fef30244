"""The code paths as interchangeable op sets: update rules are written once against `ops`.

FOREACH applies each op to a list of tensors (torch._foreach_*, multi-tensor kernels);
PER_TENSOR applies the same op to one tensor. BROADCAST applies it to the rows of stacked
members ([K, n] views, optimizers/fused.py) where a hyperparameter may be a [K, 1] float64 tensor,
one value per member. Same ops in the same order, so every path rounds identically.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype

FOREACH = SimpleNamespace(
    add=torch._foreach_add,
    add_=torch._foreach_add_,
    mul_=torch._foreach_mul_,
    div_=torch._foreach_div_,
    sqrt=torch._foreach_sqrt,
    reciprocal_=torch._foreach_reciprocal_,
    lerp_=torch._foreach_lerp_,
    addcmul_=torch._foreach_addcmul_,
    addcdiv_=torch._foreach_addcdiv_,
)

PER_TENSOR = SimpleNamespace(
    add=torch.add,
    add_=torch.Tensor.add_,
    mul_=torch.Tensor.mul_,
    div_=torch.Tensor.div_,
    sqrt=torch.sqrt,
    reciprocal_=torch.Tensor.reciprocal_,
    lerp_=torch.Tensor.lerp_,
    addcmul_=lambda x, a, b, value: x.addcmul_(a, b, value=value),
    addcdiv_=lambda x, a, b, value: x.addcdiv_(a, b, value=value),
)


def _like(value, tensor: torch.Tensor):
    """A float64 hyperparameter tensor in `tensor`'s dtype: the cast a Python scalar gets inside a kernel."""
    return value.to(tensor.dtype) if isinstance(value, torch.Tensor) else value


def _broadcast_add(x, other, alpha=1):
    # x + alpha*other; a tensor alpha goes through addcmul, which rounds as add's alpha does.
    if isinstance(alpha, torch.Tensor):
        return torch.addcmul(x, other, _like(alpha, x))
    return torch.add(x, _like(other, x), alpha=alpha)


def _broadcast_add_(x, other, alpha=1):
    if isinstance(alpha, torch.Tensor):
        return x.addcmul_(other, _like(alpha, x))
    return x.add_(_like(other, x), alpha=alpha)


def _broadcast_addcdiv_(x, t1, t2, value):
    # addcdiv takes no tensor value, so its rounding is rebuilt from other ops, in the order of the kernel the
    # members' own optimizers run: on a CPU x + (value * t1) / t2; on CUDA (addcdiv and its foreach form alike)
    # x + value * (t1 / t2), which addcmul gives with the same multiply-add.
    if isinstance(value, torch.Tensor):
        if x.is_cuda:
            return x.addcmul_(t1 / t2, _like(value, t1))
        return x.add_(t1.mul(_like(value, t1)).div_(t2))
    return x.addcdiv_(t1, t2, value=value)


BROADCAST = SimpleNamespace(
    add=_broadcast_add,
    add_=_broadcast_add_,
    mul_=lambda x, value: x.mul_(_like(value, x)),
    div_=lambda x, value: x.div_(_like(value, x)),
    # Functions, not Tensor's method descriptors: torch 2.11's compiler cannot call a descriptor held in a namespace.
    sqrt=lambda x: x.sqrt(),
    reciprocal_=lambda x: x.reciprocal_(),
    lerp_=lambda x, end, weight: x.lerp_(end, weight),
    addcmul_=lambda x, a, b, value: x.addcmul_(a, b, value=value),
    addcdiv_=_broadcast_addcdiv_,
)


def group_by_device_and_dtype(tensor_lists: list[list]) -> list[tuple[list[list], list[int]]]:
    """Split parallel lists into same-device, same-dtype sublists (foreach kernels need that) plus their indices."""
    # Autograd and load_state_dict keep grads and state on their parameter's device and dtype,
    # so checking the parameters (tensor_lists[0]) decides; this is cheaper than the general split.
    first = tensor_lists[0][0]
    device, dtype = first.device, first.dtype
    if all(t.device == device and t.dtype == dtype for t in tensor_lists[0]):
        return [(tensor_lists, list(range(len(tensor_lists[0]))))]
    return list(_group_tensors_by_device_and_dtype(tensor_lists, with_indices=True).values())
