"""K models of one architecture trained as one: stacked weights, per-member views, two ways to run them.

Each member keeps its own nn.Module whose parameters and buffers are views into slice k of the
stacked tensors, so the usual per-model code (optimizers over `param_groups(member)`, state_dict,
model norm) works on a member unchanged, and gradients land in slice k of the stacked gradients.

Routes: "vmap" runs all members in one torch.vmap(functional_call) pass (a grouped kernel per
layer: few large kernels, what a GPU wants); "loop" runs the members one after another on the same
batch through their own modules (on CPUs grouped convolutions were 1.5x slower than K plain ones
for ResNet20, so packing there shares only the data pipeline).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

ROUTES = ("vmap", "loop")


# The smallest pack that route=auto runs with vmap on CUDA. On an H200 (results/benchmarks.md) vmap
# trained 4 and 12 members 1.32x and 1.49x faster than sequential runs (loop: 1.14x, 1.17x), but a
# single member at 0.50x, while the loop route runs the single run's own kernels.
VMAP_MIN_MEMBERS = 4


def default_route(device: torch.device | str, members: int) -> str:
    """route=auto: vmap for packs of VMAP_MIN_MEMBERS or more on CUDA, loop otherwise."""
    return "vmap" if torch.device(device).type == "cuda" and members >= VMAP_MIN_MEMBERS else "loop"


def _set_tensor(module: nn.Module, dotted: str, value: torch.Tensor, *, parameter: bool) -> None:
    *path, leaf = dotted.split(".")
    owner = module.get_submodule(".".join(path)) if path else module
    if parameter:
        owner._parameters[leaf] = value
    else:
        owner._buffers[leaf] = value


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """[K, ...] copy of equal tensors whose slice k keeps tensor k's memory layout (e.g. channels_last)."""
    first = tensors[0]
    out = torch.empty_strided((len(tensors), *first.shape), (first.numel(), *first.stride()), dtype=first.dtype,
                              device=first.device)
    with torch.no_grad():
        for k, tensor in enumerate(tensors):
            out[k].copy_(tensor)
    return out


class ModelPack:
    """The members' weights stacked along a new leading dimension of size K.

    `params[name]` is a [K, ...] leaf tensor that requires grad; its `.grad` is allocated once and
    zeroed in place, so `members[k]`'s parameters keep `.grad` views of slice k for good and each
    member's optimizer reads and updates only its own slice. Buffers (BatchNorm running statistics)
    are stacked too, so the vmapped forward updates every member's statistics in place.
    """

    def __init__(self, members: list[nn.Module], route: str = "vmap") -> None:
        if not members:
            raise ValueError("a pack needs at least one model")
        if route not in ROUTES:
            raise ValueError(f"route must be vmap or loop (got {route!r})")
        self.members = members
        self.size = len(members)
        self.route = route
        named = [(dict(m.named_parameters()), dict(m.named_buffers())) for m in members]
        self.params = {name: _stack([p[name] for p, _ in named]).requires_grad_() for name in named[0][0]}
        self.buffers = {name: _stack([b[name] for _, b in named]) for name in named[0][1]}
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
        # Member-major flat lists, so one foreach kernel gives every member's per-tensor norms.
        self._param_views = [p.detach() for member in members for p in member.parameters()]
        self._grad_views = [p.grad for member in members for p in member.parameters()]
        self._stacked_grads = [p.grad for p in self.params.values()]
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
        if self.route == "vmap":
            return self._vmapped(self.params, self.buffers, x)
        return torch.stack([member(x) for member in self.members])

    def zero_grad(self) -> None:
        torch._foreach_zero_(self._stacked_grads)

    @torch.no_grad()
    def grad_norms(self) -> torch.Tensor:
        """[K] Euclidean norm of each member's gradient, computed as epoch.py does for one model."""
        return self._member_norms(self._grad_views)

    @torch.no_grad()
    def model_norms(self) -> torch.Tensor:
        """[K] Euclidean norm of each member's parameters, as epoch.model_norm of one model."""
        return self._member_norms(self._param_views)

    def _member_norms(self, views: list[torch.Tensor]) -> torch.Tensor:
        per_tensor = torch.stack(torch._foreach_norm(views)).view(self.size, -1)
        return torch.linalg.vector_norm(per_tensor, dim=1)

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


def member_cross_entropy(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """[K] cross-entropy of each member's logits [K, N, C] against the shared labels y [N]."""
    size, n, classes = logits.shape
    per_sample = F.cross_entropy(logits.reshape(size * n, classes), y.repeat(size), reduction="none")
    per_sample = per_sample.view(size, n)
    return per_sample.mean(1) if reduction == "mean" else per_sample.sum(1)
