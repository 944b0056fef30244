"""The two code paths as interchangeable op sets: update rules are written once against `ops`.

FOREACH applies each op to a list of tensors (torch._foreach_*, multi-tensor kernels);
PER_TENSOR applies the same op to one tensor. Same ops in the same order, so both paths
round identically.
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


def group_by_device_and_dtype(tensor_lists: list[list]) -> list[tuple[list[list], list[int]]]:
    """Split parallel lists into same-device, same-dtype sublists (foreach kernels need that) plus their indices."""
    # Autograd and load_state_dict keep grads and state on their parameter's device and dtype,
    # so checking the parameters (tensor_lists[0]) decides; this is cheaper than the general split.
    first = tensor_lists[0][0]
    device, dtype = first.device, first.dtype
    if all(t.device == device and t.dtype == dtype for t in tensor_lists[0]):
        return [(tensor_lists, list(range(len(tensor_lists[0]))))]
    return list(_group_tensors_by_device_and_dtype(tensor_lists, with_indices=True).values())
