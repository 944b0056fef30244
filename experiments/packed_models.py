"""K models of one architecture trained as one: a [K, P] parameter buffer, per-member views, four routes.

Storage. Member k's parameters are row k of one [K, P] buffer and its gradients row k of another,
parameters with ndim > 1 first, so that each param group of `optimizers.param_groups` is one column
range and a fused optimizer (experiments/pack_optimizer.py) steps every member with a handful of
kernels. On the buffer sit, per parameter name, a stacked [K, ...] leaf view (the functional
routes' input) and each member's own nn.Module whose parameters are views of slice k with `.grad`
views of the gradient buffer: per-model code (state_dict, norms, param groups) works on a member
unchanged, and whichever route computes the gradients, they land in the buffer. Buffers (BatchNorm
statistics) are stacked [K, ...] tensors that the members' buffers view.

Routes (how the members' forward and backward run on one shared batch):
- "loop": members one after another through their own modules: the very kernels of a single run.
- "streams": loop with each member on its own CUDA stream, so that the small kernels of different
  members can run at the same time (on a CPU it is loop).
- "vmap": one torch.vmap(functional_call) pass: functorch turns each layer into one grouped kernel.
- "grouped": one network built for K members (models.CifarResNet(members=K), HFTA's fused model):
  grouped convolutions, BatchNorm over K x the channels, K linear heads, run functionally on the
  stacked weights (each gathered into the packed layout, one copy per step, whose backward lands in
  the gradient buffer). The same kernels as vmap, without vmap's per-op batching work.

`compile(mode)` replaces each route's forward-and-loss with a torch.compile'd function (one graph for
all members: functional calls on a shared template, not K modules); the backward stays autograd's.
"""
from __future__ import annotations

import copy
import warnings
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from experiments.config_checks import ConfigError

ROUTES = ("loop", "streams", "vmap", "grouped")

# The stacked views of the buffer are strided by design (a member's row is P values long), so their
# gradients are strided views too; autograd's layout hint about that is no fault.
warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")

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


def _loss_precision(logits: torch.Tensor) -> torch.Tensor:
    """Half-precision logits go up to float32 for the loss, as a single run does; float64 stays float64."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def member_cross_entropy(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """[K] cross-entropy of each member's logits [K, N, C] against the shared labels y [N].

    Labels of -100 (a padded evaluation batch, reduction "sum") add nothing.
    """
    size, n, classes = logits.shape
    per_sample = F.cross_entropy(logits.reshape(size * n, classes), y.repeat(size), reduction="none")
    per_sample = per_sample.view(size, n)
    return per_sample.mean(1) if reduction == "mean" else per_sample.sum(1)


class ModelPack:
    """The members' weights as rows of one buffer; `params[name]` a [K, ...] leaf view per parameter."""

    def __init__(self, members: list[nn.Module], route: str = "loop") -> None:
        if not members:
            raise ValueError("a pack needs at least one model")
        if route not in ROUTES:
            raise ValueError(f"route must be one of {', '.join(ROUTES)} (got {route!r})")
        self.members = members
        self.size = len(members)
        self.route = route
        named = [(dict(m.named_parameters()), dict(m.named_buffers())) for m in members]
        first = named[0][0]
        # Decayed-first column order: `optimizers.param_groups` puts ndim > 1 in the decayed group.
        self.names = [n for n, p in first.items() if p.ndim > 1] + [n for n, p in first.items() if p.ndim <= 1]
        self.columns: dict[str, tuple[int, int]] = {}
        offset = 0
        for name in self.names:
            self.columns[name] = (offset, offset + first[name].numel())
            offset += first[name].numel()
        self.width = offset
        self.decayed_width = sum(first[n].numel() for n in self.names if first[n].ndim > 1)
        any_param = first[self.names[0]]
        self.flat_params = torch.zeros(self.size, self.width, dtype=any_param.dtype, device=any_param.device)
        self.flat_grads = torch.zeros_like(self.flat_params)
        self.params: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name in self.names:
                stacked = self._view(self.flat_params, name, first[name])
                for k, (params, _) in enumerate(named):
                    stacked[k].copy_(params[name])
                stacked.requires_grad_()
                stacked.grad = self._view(self.flat_grads, name, first[name])
                self.params[name] = stacked
        self.buffers = {name: _stack([b[name] for _, b in named]) for name in named[0][1]}
        for k, member in enumerate(members):
            for name, stacked in self.params.items():
                view = nn.Parameter(stacked.detach()[k])
                view.grad = stacked.grad[k]
                _set_tensor(member, name, view, parameter=True)
            for name, stacked in self.buffers.items():
                _set_tensor(member, name, stacked[k], parameter=False)
        # The stateless copy that functional_call runs; its own tensors are never touched.
        self._template = copy.deepcopy(members[0]).to("meta")
        # Member-major flat lists, so one foreach kernel gives every member's per-tensor norms.
        self._param_views = [p.detach() for member in members for p in member.parameters()]
        self._grad_views = [p.grad for member in members for p in member.parameters()]
        self._member_params = [dict(member.named_parameters()) for member in members]
        self._member_buffers = [dict(member.named_buffers()) for member in members]
        self._vmapped = torch.vmap(self._call_one, in_dims=(0, 0, None))
        if route == "grouped":
            self._grouped_template, self._grouped_shapes, self._grouped_buffers = self._build_grouped()
        self._streams: list | None = None
        self._member_loss = self._member_loss_eager
        self._pack_loss = self._pack_loss_eager
        self.compile_mode: str | None = None

    def _view(self, flat: torch.Tensor, name: str, like: torch.Tensor) -> torch.Tensor:
        """[K, *like.shape] view of `name`'s columns of `flat`, each slice in like's memory layout."""
        start, _ = self.columns[name]
        return flat.as_strided((self.size, *like.shape), (self.width, *like.stride()), flat.storage_offset() + start)

    def _build_grouped(self) -> tuple[nn.Module, dict[str, torch.Size], dict[str, torch.Tensor]]:
        """The packed network as a stateless template, its parameter shapes, and its buffers as views of ours."""
        member = self.members[0]
        if not hasattr(member, "packed"):
            raise ValueError(f"route=grouped needs models that can be packed (models.CifarResNet), not "
                             f"{type(member).__name__}; use route=vmap or loop")
        template = member.packed(self.size).to("meta")
        shapes = {name: p.shape for name, p in template.named_parameters()}
        buffers = {}
        for name, b in template.named_buffers():
            stacked = self.buffers[name]
            # BatchNorm's batch counter is a scalar of the packed layer; the [K] counters stand in for it.
            buffers[name] = stacked.view(b.shape) if stacked.numel() == b.numel() else stacked
        return template, shapes, buffers

    def _grouped_params(self) -> dict[str, torch.Tensor]:
        """Our [K, ...] parameters as the packed network's tensors ([K*O, I, 3, 3] for a conv): a copy each
        (a member's slice is a row of the buffer apart from the next one's), kept in the members' memory layout."""
        merged = {}
        for name, stacked in self.params.items():
            if stacked.dim() == 5 and not stacked[0].is_contiguous() and \
                    stacked[0].is_contiguous(memory_format=torch.channels_last):
                k, o, i, h, w = stacked.shape
                merged[name] = stacked.permute(0, 1, 3, 4, 2).reshape(k * o, h, w, i).permute(0, 3, 1, 2)
            else:
                merged[name] = stacked.reshape(self._grouped_shapes[name])
        return merged

    def _grouped_forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = functional_call(self._grouped_template, (self._grouped_params(), self._grouped_buffers), (x,))
        return logits if self.size > 1 else logits.unsqueeze(0)  # a network of one member is a plain one

    def _call_one(self, params, buffers, x):
        return functional_call(self._template, (params, buffers), (x,))

    # ---------------------------------------------------------------- forward and loss, per route

    def _member_loss_eager(self, k: int, x: torch.Tensor, y: torch.Tensor, reduction: str = "mean"):
        logits = self.members[k](x)
        return F.cross_entropy(_loss_precision(logits), y, reduction=reduction), (logits.detach().argmax(1) == y).sum()

    def _member_loss_functional(self, params, buffers, x, y, reduction: str = "mean"):
        logits = functional_call(self._template, (params, buffers), (x,))
        return F.cross_entropy(_loss_precision(logits), y, reduction=reduction), (logits.detach().argmax(1) == y).sum()

    def _pack_loss_eager(self, x: torch.Tensor, y: torch.Tensor, reduction: str = "mean"):
        logits = self._grouped_forward(x) if self.route == "grouped" else self._vmapped(self.params, self.buffers, x)
        return member_cross_entropy(_loss_precision(logits), y, reduction), (logits.detach().argmax(-1) == y).sum(-1)

    def compile(self, mode: str) -> None:
        """torch.compile the forward and loss of this pack's route (mode: default, reduce-overhead, max-autotune)."""
        if self.route == "streams" and mode == "reduce-overhead":
            # CUDA graph trees share one memory pool and plan its reuse for graphs replayed in turn on one
            # stream; members' graphs replaying at once on their own streams could overwrite each other's memory.
            raise ConfigError("route=streams cannot run CUDA graphs (trainer.compile=reduce-overhead); use "
                              "hydra.launcher.route=loop with reduce-overhead, or trainer.compile=default")
        # dynamic=False: every shape here is fixed (training batches drop the last partial one, evaluation pads
        # its last), so a second shape (the test batch, another pack size in the same process) gets its own
        # static graph instead of turning the first into a slower, symbolic-shape one.
        options = dict(fullgraph=True, dynamic=False, mode=None if mode == "default" else mode)
        if mode == "reduce-overhead":
            # CUDA graphs replay fixed addresses and skip any graph that mutates an input they do not own:
            # declare the weights and the BatchNorm statistics (mutated in train mode) static.
            static = [*self.params.values(), *self.buffers.values(),
                      *(t for member in self._member_params + self._member_buffers for t in member.values())]
            if self.route == "grouped":
                static += list(self._grouped_buffers.values())
            # The gradient views grad_norms() reads inside the compiled step's accumulation: unmarked, every
            # replay would copy all of them (21 per member) into the graph's own memory first.
            static += self._grad_views
            # guard=False, as torch 2.14's default: a guard on each address would recompile the loop route's one
            # member function for every member (older releases defaulted to True).
            for tensor in static:
                torch._dynamo.mark_static_address(tensor, guard=False)
        if self.route in ("vmap", "grouped"):
            self._pack_loss = torch.compile(self._pack_loss_eager, **options)
        else:
            compiled = torch.compile(self._member_loss_functional, **options)
            self._member_loss = lambda k, x, y, reduction="mean": compiled(
                self._member_params[k], self._member_buffers[k], x, y, reduction)
        self.compile_mode = mode

    def _member_streams(self):
        """One CUDA stream per member on route=streams on a GPU; None elsewhere (plain loop)."""
        if self.route != "streams" or self.flat_params.device.type != "cuda":
            return None
        if self._streams is None:
            self._streams = [torch.cuda.Stream(self.flat_params.device) for _ in range(self.size)]
        return self._streams

    def forward_backward(self, x: torch.Tensor, y: torch.Tensor, *, multipliers: list[float], multiplier_tensor,
                         mask: torch.Tensor, active: list[bool],
                         autocast: AbstractContextManager = nullcontext()) -> tuple[torch.Tensor, torch.Tensor]:
        """Each active member's c_k * CE_k backward into the gradient buffer; returns [K] plain losses and hits.

        Inactive members take no step: on loop and streams they do no work (NaN loss, 0 hits); on vmap
        and grouped they run, but torch.where keeps their (maybe NaN) loss out of the backward.
        """
        if self.route in ("vmap", "grouped"):
            with autocast:
                losses, hits = self._pack_loss(x, y)
            torch.where(mask, losses * multiplier_tensor, torch.zeros_like(losses)).sum().backward()
            return losses.detach(), hits
        streams = self._member_streams()
        if streams is not None:
            main = torch.cuda.current_stream(x.device)
            for s in streams:
                s.wait_stream(main)  # the batch and the zeroed gradients are ready
        losses, hits = [], []
        for k, (c, on) in enumerate(zip(multipliers, active)):
            if not on:
                losses.append(None)
                hits.append(None)
                continue
            with torch.cuda.stream(streams[k]) if streams is not None else nullcontext():
                if streams is not None:
                    x.record_stream(streams[k])
                    y.record_stream(streams[k])
                with autocast:
                    loss, hit = self._member_loss(k, x, y)
                (loss * c if c != 1 else loss).backward()
                losses.append(loss.detach())
                hits.append(hit)
        if streams is not None:
            for s in streams:
                main.wait_stream(s)
        like = next(t for t in losses if t is not None)
        nan = torch.full((), float("nan"), device=like.device, dtype=like.dtype)
        zero = torch.zeros((), device=like.device, dtype=torch.int64)
        return (torch.stack([t if t is not None else nan for t in losses]),
                torch.stack([t if t is not None else zero for t in hits]))

    @torch.no_grad()
    def evaluate_batch(self, x: torch.Tensor, y: torch.Tensor, *,
                       autocast: AbstractContextManager = nullcontext()) -> tuple[torch.Tensor, torch.Tensor]:
        """[K] summed cross-entropy and hits of every member on one batch (labels -100 are padding)."""
        with autocast:
            if self.route in ("vmap", "grouped"):
                return self._pack_loss(x, y, "sum")
            sums, hits = zip(*(self._member_loss(k, x, y, "sum") for k in range(self.size)))
        return torch.stack(sums), torch.stack(hits)

    # ---------------------------------------------------------------- state

    def train(self, mode: bool = True) -> None:
        self._template.train(mode)
        if self.route == "grouped":
            self._grouped_template.train(mode)
        for member in self.members:
            member.train(mode)

    def eval(self) -> None:
        self.train(False)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [K, N, classes] of every member on the same batch x [N, ...]."""
        if self.route == "vmap":
            return self._vmapped(self.params, self.buffers, x)
        if self.route == "grouped":
            return self._grouped_forward(x)
        return torch.stack([member(x) for member in self.members])

    def zero_grad(self) -> None:
        self.flat_grads.zero_()

    @torch.no_grad()
    def grad_norms(self) -> torch.Tensor:
        """[K] Euclidean norm of each member's gradient, computed as a single run computes its own."""
        return self._member_norms(self._grad_views)

    @torch.no_grad()
    def model_norms(self) -> torch.Tensor:
        """[K] Euclidean norm of each member's parameters, as epoch.model_norm of one model."""
        return self._member_norms(self._param_views)

    def _member_norms(self, views: list[torch.Tensor]) -> torch.Tensor:
        per_tensor = torch.stack(torch._foreach_norm(views)).view(self.size, -1)
        return torch.linalg.vector_norm(per_tensor, dim=1)

    def member_columns(self, param: torch.Tensor) -> tuple[int, int, str]:
        """(start, stop, name) of a member's parameter in its row of the buffer."""
        row_start = self.flat_params.storage_offset()
        offset = (param.storage_offset() - row_start) % self.width
        for name, (start, stop) in self.columns.items():
            if start == offset and param.shape == self.params[name].shape[1:]:
                return start, stop, name
        raise ValueError("this tensor is not a parameter of the pack's members; build the members' optimizers after "
                         "the ModelPack, which puts views of its buffer in place of their parameters")

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
