"""The training step, one training epoch and one evaluation pass of a pack (a single run is a pack of one).

Nothing in a step reads the device from the host: losses, hits and gradient norms are summed on the
device, the optimizer reads eta_t there (experiments/pack_optimizer.py), and the sums come back once
per epoch, which is also when a non-finite loss (divergence) is seen.
"""
from __future__ import annotations

import math
import sys
import time
from contextlib import AbstractContextManager, nullcontext

import torch
from tqdm.auto import tqdm

from experiments import preemption
from experiments.layer_stats import LayerStats
from experiments.pack_optimizer import PackOptimizer
from experiments.packed_models import ModelPack


def model_norm(model: torch.nn.Module) -> torch.Tensor:
    """Euclidean norm of all parameters, as in the post's figure."""
    with torch.no_grad():
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.detach() for p in model.parameters()])))


class TrainStep:
    """One step of every active member: forward, c_k * loss backward, optimizer step, metrics summed on the device."""

    def __init__(self, pack: ModelPack, optimizer: PackOptimizer, loss_multipliers: list[float],
                 autocast: AbstractContextManager = nullcontext()) -> None:
        self.pack = pack
        self.optimizer = optimizer
        self.autocast = autocast
        device = pack.flat_params.device
        self.multipliers = [float(c) for c in loss_multipliers]
        loss_dtype = torch.promote_types(pack.flat_params.dtype, torch.float32)
        self.multiplier_tensor = torch.tensor(self.multipliers, device=device, dtype=loss_dtype)
        self.active = [True] * pack.size
        self.mask = torch.ones(pack.size, dtype=torch.bool, device=device)
        self.loss_sum = torch.zeros(pack.size, device=device, dtype=torch.float64)
        self.correct = torch.zeros(pack.size, device=device, dtype=torch.int64)
        self.grad_norm_sum = torch.zeros(pack.size, device=device, dtype=torch.float64)
        self._accumulate = self._accumulate_eager

    def set_active(self, active: list[bool]) -> None:
        self.active = list(active)
        self.mask.copy_(torch.tensor(self.active))
        self.optimizer.set_active(self.active)

    def reset(self) -> None:
        for total in (self.loss_sum, self.correct, self.grad_norm_sum):
            total.zero_()

    def _accumulate_eager(self, losses: torch.Tensor, hits: torch.Tensor, batch: int) -> None:
        # Gradient norm of the plain loss: the c*loss gradient divided by c.
        self.grad_norm_sum += self.pack.grad_norms() / self.multiplier_tensor
        self.loss_sum += losses * batch
        self.correct += hits

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.pack.zero_grad()
        losses, hits = self.pack.forward_backward(x, y, multipliers=self.multipliers,
                                                  multiplier_tensor=self.multiplier_tensor, mask=self.mask,
                                                  active=self.active, autocast=self.autocast)
        with torch.no_grad():
            self._accumulate(losses, hits, y.shape[0])
        self.optimizer.step()

    def compile(self, mode: str) -> None:
        """trainer.compile: default, reduce-overhead (CUDA graphs) or max-autotune; every part fullgraph."""
        self.pack.compile(mode)
        self.optimizer.compile(mode)
        if mode == "reduce-overhead":
            for total in (self.loss_sum, self.correct, self.grad_norm_sum, self.multiplier_tensor):
                torch._dynamo.mark_static_address(total, guard=False)
        # dynamic=False: shapes are static (experiments/packed_models.py ModelPack.compile says why).
        self._accumulate = torch.compile(self._accumulate_eager, fullgraph=True, dynamic=False,
                                         mode=None if mode == "default" else mode)


def _begin_step(compiled_with_graphs: bool) -> None:
    if compiled_with_graphs:
        # A new iteration for cudagraph trees: the last step's graph outputs may be overwritten now.
        torch.compiler.cudagraph_mark_step_begin()


def train_epoch(step: TrainStep, loader, *, progress: bool = False, desc: str = "",
                stats: LayerStats | None = None) -> list[dict[str, float]]:
    """Trains every active member on each batch of `loader`; returns one dict per member.

    images_per_s is the rate of the shared batches, i.e. each member's own throughput (a pack's
    aggregate is that times the members trained).
    """
    pack = step.pack
    pack.train()
    step.reset()
    graphs = pack.compile_mode == "reduce-overhead"
    seen = steps = 0
    start = time.perf_counter()
    for x, y in tqdm(loader, desc=desc, disable=not progress, leave=False, file=sys.stderr):
        _begin_step(graphs)
        record = stats is not None and stats.due()
        if record:  # trainer.magnitude_stats_every: outside the (compiled) step, on the device
            stats.before_step(step.optimizer.step_sizes())
        step(x, y)
        if record:
            stats.after_step()
        seen += y.shape[0]
        steps += 1
        preemption.stop_if_noticed()
    device = step.loss_sum.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    train_loss = (step.loss_sum / max(seen, 1)).tolist()
    train_acc = (step.correct.double() / max(seen, 1)).tolist()
    grad_norm = (step.grad_norm_sum / max(steps, 1)).tolist()
    images_per_s = seen / elapsed if elapsed > 0 else math.nan
    return [{"train_loss": train_loss[k], "train_acc": train_acc[k], "grad_norm": grad_norm[k],
             "epoch_time_s": elapsed, "images_per_s": images_per_s} for k in range(pack.size)]


@torch.no_grad()
def evaluate(pack: ModelPack, loader, *, autocast: AbstractContextManager = nullcontext()) -> list[dict[str, float]]:
    """Test loss and accuracy of every member; a padded last batch (labels -100) counts only its real images."""
    pack.eval()
    device = pack.flat_params.device
    loss_sum = torch.zeros(pack.size, device=device, dtype=torch.float64)
    correct = torch.zeros(pack.size, device=device, dtype=torch.int64)
    graphs = pack.compile_mode == "reduce-overhead"
    seen = 0
    for x, y in loader:
        _begin_step(graphs)
        sums, hits = pack.evaluate_batch(x, y, autocast=autocast)
        loss_sum += sums
        correct += hits
        seen += y.shape[0]
    # A DeviceLoader knows how many of its images are real; a plain list of batches has no padding.
    seen = max(getattr(loader, "num_samples", seen), 1)
    test_loss = (loss_sum / seen).tolist()
    test_acc = (correct.double() / seen).tolist()
    return [{"test_loss": test_loss[k], "test_acc": test_acc[k]} for k in range(pack.size)]
