"""K models of one architecture trained as one: stacked weights, one vmapped forward, per-member views.

Each member keeps its own nn.Module whose parameters and buffers are views into slice k of the
stacked tensors, so the usual per-model code (optimizers over `param_groups(member)`, state_dict,
model norm) works on a member unchanged while the forward and backward run once for the pack.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state


def _set_tensor(module: nn.Module, dotted: str, value: torch.Tensor, *, parameter: bool) -> None:
    *path, leaf = dotted.split(".")
    owner = module.get_submodule(".".join(path)) if path else module
    if parameter:
        owner._parameters[leaf] = value
    else:
        owner._buffers[leaf] = value


class ModelPack:
    """The members' weights stacked along a new leading dimension of size K.

    `params[name]` is a [K, ...] leaf tensor that requires grad; its `.grad` is allocated once and
    zeroed in place, so `members[k]`'s parameters keep `.grad` views of slice k for good and each
    member's optimizer reads and updates only its own slice. Buffers (BatchNorm running statistics)
    are stacked too, so the vmapped forward updates every member's statistics in place.
    """

    def __init__(self, members: list[nn.Module]) -> None:
        if not members:
            raise ValueError("a pack needs at least one model")
        self.members = members
        self.size = len(members)
        self.params, self.buffers = stack_module_state(members)
        # The stateless copy that functional_call runs; its own tensors are never touched.
        self._template = copy.deepcopy(members[0]).to("meta")
        for p in self.params.values():
            p.grad = torch.zeros_like(p)
        for k, member in enumerate(members):
            for name, stacked in self.params.items():
                view = nn.Parameter(stacked.detach()[k])
                view.grad = stacked.grad[k]
                _set_tensor(member, name, view, parameter=True)
            for name, stacked in self.buffers.items():
                _set_tensor(member, name, stacked[k], parameter=False)
        self._vmapped = torch.vmap(self._call_one, in_dims=(0, 0, None))

    def _call_one(self, params, buffers, x):
        return functional_call(self._template, (params, buffers), (x,))

    def train(self, mode: bool = True) -> None:
        self._template.train(mode)
        for member in self.members:
            member.train(mode)

    def eval(self) -> None:
        self.train(False)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [K, N, classes] of every member on the same batch x [N, ...]."""
        return self._vmapped(self.params, self.buffers, x)

    def zero_grad(self) -> None:
        torch._foreach_zero_(list(p.grad for p in self.params.values()))

    @torch.no_grad()
    def grad_norms(self) -> torch.Tensor:
        """[K] Euclidean norm of each member's gradient (per tensor, then over tensors, as epoch.py)."""
        return _member_norms([p.grad for p in self.params.values()], self.size)

    @torch.no_grad()
    def model_norms(self) -> torch.Tensor:
        """[K] Euclidean norm of each member's parameters, as epoch.model_norm of one model."""
        return _member_norms([p.detach() for p in self.params.values()], self.size)

    def state_dict(self) -> dict:
        return {"params": {k: v.detach().clone() for k, v in self.params.items()},
                "buffers": {k: v.clone() for k, v in self.buffers.items()}}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Copies into the existing storage, so the members' views stay bound to it."""
        for kind, own in (("params", self.params), ("buffers", self.buffers)):
            saved = state[kind]
            if set(saved) != set(own) or any(saved[k].shape != own[k].shape for k in own):
                raise ValueError(f"checkpoint {kind} do not fit this pack's models (other depth, batch_norm, "
                                 "classes or pack size); move the pack checkpoint away to restart the pack")
            for name, tensor in own.items():
                tensor.copy_(saved[name])


def _member_norms(tensors: list[torch.Tensor], size: int) -> torch.Tensor:
    per_tensor = torch.stack([torch.linalg.vector_norm(t.reshape(size, -1), dim=1) for t in tensors])
    return torch.linalg.vector_norm(per_tensor, dim=0)


def member_cross_entropy(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """[K] cross-entropy of each member's logits [K, N, C] against the shared labels y [N]."""
    size, n, classes = logits.shape
    per_sample = F.cross_entropy(logits.reshape(size * n, classes), y.repeat(size), reduction="none")
    per_sample = per_sample.view(size, n)
    return per_sample.mean(1) if reduction == "mean" else per_sample.sum(1)
